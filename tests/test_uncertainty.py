"""Error bands (configurator/uncertainty.py), the ranking that survives them (ranking.py), the conventional
plan beside the winner (conventional.py), and where the bands show up (estimate, plan, validate, SVG)."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from configurator.cli import app
from configurator.ranking import order_by_band
from configurator.uncertainty import (GROUP_TOLERANCE, MIN_GROUP_ROWS, TAG_NAMES, TARGET_COVERAGE, Band,
                                      ErrorModel, ResidualTable, coverage, error_bands_path, group_widening,
                                      load_error_model_file, loo_quantiles, weighted_quantiles)

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO.parent / "shared" / "data" / "published_runs.csv"
runner = CliRunner()


def _band(mean: float, p10: float, p25: float, p90: float, oom: float = 0.0) -> Band:
    return Band(tokens_per_s_per_gpu=mean, tokens_per_s_per_gpu_p10=p10, tokens_per_s_per_gpu_p25=p25,
                tokens_per_s_per_gpu_p90=p90, peak_gib=70.0, peak_gib_p10=65.0, peak_gib_p90=75.0,
                capacity_gib=80.0, oom_risk=oom, effective_rows=50.0)


def test_a_plan_better_only_inside_the_band_is_reported_as_tied() -> None:
    leader = _band(1000, 900, 950, 1100)       # p25 950
    inside = _band(960, 864, 912, 1056)        # 4% slower: its band overlaps the leader's
    beyond = _band(700, 630, 665, 770)         # 30% slower: 770 < 900, no overlap
    order = order_by_band([inside, leader, beyond])
    assert [i for i, *_ in order] == [1, 0, 2]
    tied = {i: t for i, _, _, t in order}
    assert tied == {1: False, 0: True, 2: False}


def test_p25_objective_prefers_the_narrower_band_and_mean_does_not() -> None:
    wide = _band(1000, 700, 800, 1200)         # faster by the model, but its error band is wide
    narrow = _band(950, 900, 920, 1000)
    assert [i for i, *_ in order_by_band([wide, narrow], "p25")] == [1, 0]
    assert [i for i, *_ in order_by_band([wide, narrow], "mean")] == [0, 1]


def test_a_plan_over_the_oom_risk_limit_cannot_lead() -> None:
    risky = _band(1200, 1100, 1150, 1300, oom=0.20)
    safe = _band(1000, 900, 950, 1100, oom=0.01)
    order = order_by_band([risky, safe], "p25", oom_risk=0.05)
    assert [(i, over) for i, _, over, _ in order] == [(1, False), (0, True)]
    assert [i for i, *_ in order_by_band([risky, safe], "p25", oom_risk=0.25)] == [0, 1]


def test_weighted_quantiles_use_midpoint_positions() -> None:
    # Four equal weights sit at 0.125, 0.375, 0.625, 0.875: the median is halfway between 1 and 2.
    values, w = np.array([3.0, 0.0, 2.0, 1.0]), np.ones(4)
    assert weighted_quantiles(values, w, (0.5,))[0] == pytest.approx(1.5)
    assert weighted_quantiles(values, w, (0.25,))[0] == pytest.approx(0.5)
    # Weight 3 on the value 1: positions (0.5, 2.5, 4.5, 5.5) / 6 = 0.083, 0.417, 0.75, 0.917 for 0, 1, 2, 3,
    # so the median is a quarter of the way from 1 to 2.
    assert weighted_quantiles(values, np.array([1.0, 1.0, 1.0, 3.0]), (0.5,))[0] == pytest.approx(1.25)


def _table(tags: list[dict[str, str]], residuals: list[float], lam: float) -> ResidualTable:
    return ResidualTable(run_ids=tuple(str(i) for i in range(len(tags))), groups=tuple("g" for _ in tags),
                         tags=tuple(tags), log_residuals=np.array(residuals), lam=lam)


def test_a_group_with_few_rows_is_shrunk_toward_the_overall_distribution() -> None:
    base = {k: "a" for k in TAG_NAMES}
    odd = {**base, "precision": "fp4"}
    rng = np.random.default_rng(0)
    others = list(rng.normal(0.0, 0.1, 60))
    table = _table([base] * 60 + [odd] * 2, others + [0.8, 0.9], lam=0.3)
    median_odd = table.quantiles(odd, (0.5,))[0][0]
    # Two fp4 rows 0.85 off: their weight 2 against 60 x 0.3 = 18 keeps the median near the others'.
    assert 0.0 < median_odd < 0.2
    # With no shrinkage (lambda -> 0) the two rows decide alone.
    only = _table([base] * 60 + [odd] * 2, others + [0.8, 0.9], lam=1e-9)
    assert only.quantiles(odd, (0.5,))[0][0] == pytest.approx(0.85, abs=0.01)


def test_coverage_counts_rows_inside_their_leave_one_out_band() -> None:
    tags = [{k: "a" for k in TAG_NAMES}] * 200
    residuals = list(np.random.default_rng(1).normal(0.0, 0.2, 200))
    cov = coverage(_table(tags, residuals, lam=1.0))
    assert cov.rows == 200 and 0.72 <= cov.share <= 0.88


def _heavy_tailed_group_table() -> ResidualTable:
    """200 'dense' rows with normal errors (s.d. 0.1) and 40 'moe' rows: 28 with small errors (s.d. 0.03)
    and 12 far off (0.3-0.9 either way), the shape of this project's MoE residuals."""
    base = {k: "a" for k in TAG_NAMES}
    rng = np.random.default_rng(2)
    far = rng.uniform(0.3, 0.9, 12) * rng.choice([-1.0, 1.0], 12)
    residuals = list(rng.normal(0.0, 0.1, 200)) + list(rng.normal(0.0, 0.03, 28)) + list(far)
    return _table([base] * 200 + [{**base, "moe": "moe"}] * 40, residuals, lam=0.4)


def test_a_heavy_tailed_group_is_widened_to_80_percent_and_the_others_barely_move() -> None:
    table = _heavy_tailed_group_table()
    q = loo_quantiles(table, (0.10, 0.90))
    kernel_inside = (table.log_residuals >= q[:, 0]) & (table.log_residuals <= q[:, 1])
    # One kernel weight for both groups: the moe rows' band covers 28 of 40 (their small-error rows), 70%.
    assert kernel_inside[200:].mean() <= 0.72
    widening = group_widening(table)
    # 80% of 40 is 32 rows: the widening must reach the 4 nearest of the 12 far rows, i.e. at least ~0.3 - 0.13.
    assert widening[("moe", "moe")] > 0.15
    # Groups holding every row (all tags but 'moe' are 'a' on all 240) only close the overall gap.
    assert all(d < 0.02 for g, d in widening.items() if g != ("moe", "moe"))
    cov = {(t, v): k / n for t, v, n, k in coverage(table).by_group}
    assert 0.75 <= cov[("moe", "moe")] <= 0.85
    assert 0.75 <= cov[("moe", "a")] <= 0.85


def test_a_plans_band_moves_out_by_its_largest_group_widening() -> None:
    base = {k: "a" for k in TAG_NAMES}
    table = _table([base] * 30, list(np.linspace(-0.2, 0.2, 30)), lam=1.0)
    widened = ResidualTable(run_ids=table.run_ids, groups=table.groups, tags=table.tags,
                            log_residuals=table.log_residuals, lam=1.0,
                            widening={("moe", "a"): 0.1, ("precision", "a"): 0.05, ("moe", "b"): 0.5})
    plain = ErrorModel(time=table, memory=table, provenance={}).band(base, 1000.0, 50.0, 80.0)
    wide = ErrorModel(time=widened, memory=widened, provenance={}).band(base, 1000.0, 50.0, 80.0)
    assert wide.tokens_per_s_per_gpu_p10 == pytest.approx(plain.tokens_per_s_per_gpu_p10 * math.exp(-0.1))
    assert wide.tokens_per_s_per_gpu_p90 == pytest.approx(plain.tokens_per_s_per_gpu_p90 * math.exp(0.1))
    assert wide.tokens_per_s_per_gpu_p25 == plain.tokens_per_s_per_gpu_p25
    assert wide.peak_gib_p90 == pytest.approx(plain.peak_gib_p90 * math.exp(0.1))


@pytest.mark.parametrize("quantity", ["time", "memory"])
def test_committed_bands_hold_80_percent_of_the_runs_leave_one_out(quantity: str) -> None:
    """The CI coverage check: p10-p90 rebuilt for every row from the other rows holds 80% +- 5% of them."""
    model = load_error_model_file(error_bands_path())
    table = getattr(model, quantity)
    cov = coverage(table)
    assert 0.75 <= cov.share <= 0.85, f"{quantity}: {100 * cov.share:.1f}% inside p10-p90 ({cov.rows} rows)"
    stored = json.loads(error_bands_path().read_text())[quantity]["coverage_loo"]
    assert stored["inside_p10_p90"] == cov.inside, "profiles/error_bands.json is stale: run `configurator bands`"
    # Every mechanism with enough rows to judge is covered near 80% too, not just the pool: a user planning an
    # MoE or Blackwell job must not be told a band that holds 70% of such runs (over-coverage is only wasteful).
    low = [f"{t}={v}: {100 * k / n:.1f}% of {n}" for t, v, n, k in cov.by_group
           if n >= MIN_GROUP_ROWS and k / n < TARGET_COVERAGE - GROUP_TOLERANCE]
    assert not low, f"{quantity}: groups under {100 * (TARGET_COVERAGE - GROUP_TOLERANCE):.0f}%: {low}"


def test_error_band_rows_match_the_runs_they_came_from() -> None:
    data = json.loads(error_bands_path().read_text())
    ids = {r["run_id"] for r in csv.DictReader(RUNS.open())}
    for quantity in ("time", "memory"):
        for row in data[quantity]["rows"]:
            assert row["run_id"] in ids and set(row["tags"]) == set(TAG_NAMES)
    measured = {r["run_id"]: r for r in data["time"]["rows"]}
    r = next(iter(measured.values()))
    assert r["log_residual"] == pytest.approx(math.log(r["measured_tokens_per_s_per_gpu"] /
                                                       r["predicted_tokens_per_s_per_gpu"]), abs=1e-4)


ESTIMATE = ["--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
            "--global-batch", "64", "--tp", "2", "--pp", "2"]


def test_estimate_carries_the_bands_of_the_interface() -> None:
    out = runner.invoke(app, ["estimate", *ESTIMATE, "--json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    t, m = d["time"], d["memory"]
    assert t["tokens_per_s_per_gpu_p10"] < t["tokens_per_s_per_gpu_p25"] < t["tokens_per_s_per_gpu_p90"]
    assert m["peak_gib_p10"] < m["peak_gib_p90"]
    assert 0.0 <= d["oom_risk"] <= 1.0 and d["uncertainty"]["tags"]["gpu_family"] == "hopper"


def test_oom_risk_grows_as_the_peak_nears_capacity() -> None:
    model = load_error_model_file(error_bands_path())
    tags = {"gpu_family": "hopper", "precision": "bf16", "moe": "dense", "ep_across_nodes": "no", "cp": "no",
            "zero3": "no", "offload": "no", "runtime": "megatron", "scale": "65-512"}
    risks = [model.band(tags, 1000.0, peak, 80.0).oom_risk for peak in (40.0, 70.0, 79.0, 90.0)]
    assert risks == sorted(risks) and risks[0] == 0.0 and risks[-1] > 0.5


def test_an_unmeasured_mechanism_is_warned_about() -> None:
    model = load_error_model_file(error_bands_path())
    tags = {"gpu_family": "hopper", "precision": "bf16", "moe": "dense", "ep_across_nodes": "no", "cp": "no",
            "zero3": "no", "offload": "yes", "runtime": "megatron", "scale": "<=64"}
    assert any("offload=yes" in w for w in model.band(tags, 1000.0, 50.0, 80.0).warnings)


def test_plan_marks_ties_and_shows_the_conventional_plan() -> None:
    out = runner.invoke(app, ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8",
                              "--seq-len", "4096", "--global-batch", "64", "--top", "3", "--json"])
    assert out.exit_code == 0, out.output
    d = json.loads(out.output)
    plans = d["plans"]
    assert plans[0]["tied_with_best"] is False and all("tied_with_best" in p for p in plans)
    assert all(p["rank"]["objective"] == "p25" for p in plans)
    scores = [p["rank"]["score_tokens_per_s_per_gpu"] for p in plans if not p["rank"]["over_oom_risk_limit"]]
    assert scores == sorted(scores, reverse=True)
    conv = d["conventional"]
    assert conv["plan"]["recompute"] in ("selective", "full") and conv["plan"]["offload"] == 0.0
    saved = conv["vs_winner"]["saved_s_by_term"]
    assert sum(saved.values()) == pytest.approx(conv["vs_winner"]["step_s_saved"], abs=1e-4)


def test_the_leader_does_not_depend_on_how_many_plans_are_shown() -> None:
    """``--top 1`` once ranked only the two fastest plans: on this job both were over the 5% OOM-risk limit
    (5.3%), so one of them led where ``--top 5`` led with a plan at 0%. Every ``top`` up to 5 ranks the same
    pool now (``ranking.RANKING_POOL``)."""
    base = ["plan", "--model", "llama3-70b", "--cluster", "dgx-h100", "--num-gpus", "64", "--seq-len", "8192",
            "--global-batch", "256", "--json"]
    leaders = {}
    for top in ("1", "2", "5"):
        out = runner.invoke(app, [*base, "--top", top])
        assert out.exit_code == 0, out.output
        plans = json.loads(out.output)["plans"]
        assert len(plans) == int(top)
        leaders[top] = plans[0]
    assert len({json.dumps(p["plan"], sort_keys=True) for p in leaders.values()}) == 1, leaders
    assert not leaders["1"]["rank"]["over_oom_risk_limit"]


def test_plan_rejects_an_unknown_objective_and_a_bad_risk() -> None:
    base = ["plan", "--model", "llama3-8b", "--cluster", "dgx-h100", "--num-gpus", "8", "--seq-len", "4096",
            "--global-batch", "64"]
    from configurator.cli import main  # noqa: F401 - InputError is turned into exit 2 by main()

    for extra, field in ((["--objective", "p99"], "objective"), (["--oom-risk", "1.5"], "oom_risk")):
        out = runner.invoke(app, [*base, *extra])
        assert out.exit_code != 0 and field in str(out.exception)


def test_svg_draws_the_step_and_memory_bands(tmp_path: Path) -> None:
    picture = tmp_path / "step.svg"
    out = runner.invoke(app, ["explain", *ESTIMATE, "--svg", str(picture)])
    assert out.exit_code == 0, out.output
    text = picture.read_text()
    assert 'class="band step-band"' in text and 'class="band memory-band"' in text and "OOM risk" in text


def test_validate_out_writes_the_band_columns(tmp_path: Path) -> None:
    rows = list(csv.DictReader(RUNS.open()))[:5]
    small = tmp_path / "runs.csv"
    with small.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = runner.invoke(app, ["validate", "--runs", str(small), "--out", str(tmp_path / "p.csv")])
    assert out.exit_code == 0, out.output
    for r in csv.DictReader((tmp_path / "p.csv").open()):
        if r["predicted_tokens_per_s_per_gpu"]:
            assert float(r["predicted_tokens_per_s_per_gpu_p10"]) < float(r["predicted_tokens_per_s_per_gpu_p90"])
            assert float(r["predicted_peak_mem_gib_p90"]) > 0


def test_bands_command_rebuilds_from_stored_folds_and_refuses_to_overwrite(tmp_path: Path) -> None:
    rows = [r for r in csv.DictReader(RUNS.open()) if "bigscience" in r["source"].lower()]
    small = tmp_path / "runs.csv"
    with small.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    target = tmp_path / "bands.json"
    out = runner.invoke(app, ["bands", "--runs", str(small), "--folds", str(error_bands_path()), "--out", str(target),
                              "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(target.read_text())
    committed = {r["run_id"]: r["log_residual"] for r in json.loads(error_bands_path().read_text())["time"]["rows"]}
    for r in data["time"]["rows"]:
        assert r["log_residual"] == pytest.approx(committed[r["run_id"]], abs=1e-6)
    again = runner.invoke(app, ["bands", "--runs", str(small), "--folds", str(error_bands_path()), "--out", str(target)])
    assert again.exit_code != 0 and "force" in str(again.exception)


def test_plan_page_from_the_template_shows_bands_ties_and_the_conventional_plan(tmp_path: Path) -> None:
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("jinja2")
    from configurator.service.jobs import run_job
    from configurator.service.page import render_page
    from configurator.service.store import Store

    url = f"sqlite:///{tmp_path / 'p.db'}"
    store = Store(url)
    store.migrate()
    request = {"model": "llama3-8b", "cluster": "dgx-h100", "num_gpus": 8, "seq_len": 4096, "global_batch": 64,
               "top": 3, "time_budget": 20.0}
    job = store.create_job("key", request)
    run_job(url, job.id, None)
    done = store.get_job(job.id)
    assert done is not None and done.status == "done", done.error if done else None
    page = render_page(done, store)
    assert "id='plans'" in page and "p10-p90" in page and "OOM risk" in page
    assert "id='conventional'" in page and "id='by-mechanism'" in page
    assert 'class="band step-band"' in page and 'class="band memory-band"' in page
    ties = sum(p["tied_with_best"] for p in done.result["plans"])  # type: ignore[index]
    assert page.count("(tied within error)") == ties


def test_error_bands_were_built_from_the_committed_models_and_runs() -> None:
    """The residuals are only out-of-sample errors of *this* model: after a change to the calibration, the
    memory constants or the runs, `configurator bands --runs ../shared/data/published_runs.csv --force`
    must be rerun (its provenance records what it was built from)."""
    import hashlib

    from configurator.cost.constants import calibration_path
    from configurator.profiles import profiles_dir

    prov = json.loads(error_bands_path().read_text())["provenance"]
    sha = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    hint = "stale profiles/error_bands.json: rerun `configurator bands --runs ../shared/data/published_runs.csv --force`"
    assert prov["calibration_sha256"] == sha(calibration_path()), hint
    assert prov["memory_profile_sha256"] == sha(profiles_dir() / "memory.json"), hint
    assert prov["cost_profile_sha256"] == sha(profiles_dir() / "cost.json"), hint
    assert prov["runs_sha256"] == sha(RUNS), hint


def test_stored_residuals_are_those_of_the_current_code(tmp_path: Path) -> None:
    """A sample of rows re-predicted with their stored fold constants gives the stored predictions: a change
    to the step-time or memory code (not only to the data files) makes the committed bands stale."""
    from configurator.build_bands import memory_rows, time_rows
    from configurator.calibrate import load_samples

    data = json.loads(error_bands_path().read_text())
    picked = {r["run_id"] for r in data["time"]["rows"][::25]} | {r["run_id"] for r in data["memory"]["rows"][::7]}
    rows = [r for r in csv.DictReader(RUNS.open()) if r["run_id"] in picked]
    small = tmp_path / "runs.csv"
    with small.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    samples, _ = load_samples(small)
    hint = "stale profiles/error_bands.json: rerun `configurator bands --runs ../shared/data/published_runs.csv --force`"
    stored = {r["run_id"]: r for r in data["time"]["rows"]}
    for r in time_rows(samples, data["time"]["fold_constants"]):
        assert r["predicted_tokens_per_s_per_gpu"] == pytest.approx(
            stored[r["run_id"]]["predicted_tokens_per_s_per_gpu"], rel=1e-3), (r["run_id"], hint)
    stored_mem = {r["run_id"]: r for r in data["memory"]["rows"]}
    for r in memory_rows(small):
        assert r["predicted_gib"] == pytest.approx(stored_mem[r["run_id"]]["predicted_gib"], rel=1e-3), (r["run_id"], hint)


def test_the_conventional_plan_is_the_least_model_parallel_recipe_that_fits() -> None:
    from configurator.conventional import candidates, conventional_plan
    from configurator.cost.constants import load_calibration
    from configurator.memory import estimate_memory
    from configurator.profiles import load_cluster, load_model
    from configurator.search.space import SearchContext
    from configurator.specs.job import JobSpec

    ctx = SearchContext(model=load_model("llama3-70b"), cluster=load_cluster("dgx-h100", num_gpus=64),
                        job=JobSpec(global_batch=256, seq_len=8192))
    conv = conventional_plan(ctx, load_calibration())
    assert conv is not None and conv.memory.fits
    p = conv.plan
    # Recipe style: TP a power of two inside the node, 1F1B, no offload, micro-batch 1, no CP at 8k tokens.
    assert p.tp in (1, 2, 4, 8) and p.vpp == 1 and p.offload == 0.0 and p.micro_batch == 1 and p.cp == 1
    assert p.recompute == "selective"
    # Nothing with less model parallelism (tp x pp) fits with selective recompute.
    smaller = [c for c in candidates(ctx) if c.tp * c.pp < p.tp * p.pp]
    assert all(not estimate_memory(ctx.model, ctx.cluster, ctx.job, c, runtime=ctx.runtime).fits for c in smaller)


def test_the_conventional_plan_gets_the_same_knob_choice_as_the_winner() -> None:
    """The recipe plan is costed with the fastest setting of its open knobs (TP comm overlap here), as the
    search costs its winner: with the knob left at Megatron's default (off) it is never faster, and the
    chosen setting is what is reported."""
    from dataclasses import replace

    from configurator.conventional import conventional_plan
    from configurator.cost.constants import load_calibration
    from configurator.cost.step import evaluate, prepare
    from configurator.profiles import load_cluster, load_model
    from configurator.search.space import SearchContext
    from configurator.specs.job import JobSpec

    ctx = SearchContext(model=load_model("llama3-70b"), cluster=load_cluster("dgx-h100", num_gpus=64),
                        job=JobSpec(global_batch=256, seq_len=8192))
    constants = load_calibration()
    conv = conventional_plan(ctx, constants)
    assert conv is not None and conv.plan.tp > 1 and conv.plan.sp
    assert conv.plan.tp_overlap is not None  # the knob was chosen, not left to the runtime default
    default_off = evaluate(prepare(ctx.model, ctx.cluster, ctx.job, replace(conv.plan, tp_overlap=False),
                                   runtime=ctx.runtime), constants)
    overlap_on = evaluate(prepare(ctx.model, ctx.cluster, ctx.job, replace(conv.plan, tp_overlap=True),
                                  runtime=ctx.runtime), constants)
    assert conv.step.step_s == pytest.approx(min(default_off.step_s, overlap_on.step_s), rel=1e-12)
    assert conv.plan.tp_overlap is True and overlap_on.step_s < default_off.step_s
