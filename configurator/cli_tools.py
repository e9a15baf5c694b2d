"""Commands for checking and maintaining the model: ``validate``, ``calibrate``, ``bench``, ``probe``.

Registered on the main app by ``register`` (so ``python -m configurator.cli`` and the console script
share one app).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from configurator.cli_options import CalibrationOpt, JsonOpt, _constants, check_database_url, console
from configurator.errors import EnvironmentProblem, InputError
from configurator.render import error_table


MAX_WORKERS = 256


def check_runs_file(path: Path) -> None:
    """A runs CSV we can read: a regular UTF-8 file, parseable as CSV, with a header and data rows."""
    import csv
    import io

    from configurator.safe_files import read_text

    text = read_text(path, "runs")
    try:
        rows = [r for r in csv.reader(io.StringIO(text, newline="")) if any(c.strip() for c in r)]
    except csv.Error as exc:
        raise InputError("runs", str(path), f"is not a readable CSV ({exc})") from None
    if not rows:
        raise InputError("runs", str(path), "is empty (a header row and data rows are needed)")
    if len(rows) == 1:
        raise InputError("runs", str(path), "has a header but no data rows")


def _writing(field: str, path: Path):  # type: ignore[no-untyped-def]
    """Turn an ``OSError`` while writing ``path`` into an ``EnvironmentProblem`` naming ``field``."""
    import contextlib

    @contextlib.contextmanager
    def guard():  # type: ignore[no-untyped-def]
        try:
            yield
        except OSError as exc:
            raise EnvironmentProblem(field, str(path), f"cannot write ({exc.strerror or exc})") from None

    return guard()


def register(app: typer.Typer) -> None:
    @app.command()
    def validate(
        runs: Annotated[Path, typer.Option("--runs", help="Runs CSV (INTERFACE.md columns).")],
        out: Annotated[Optional[Path], typer.Option("--out", help="Write per-row predictions to this CSV.")] = None,
        report: Annotated[Optional[Path], typer.Option("--report", help="Write validation.md, plots and summary.json to this folder.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite --out / --report files that exist.")] = False,
        calibration: CalibrationOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Predict every row of a runs CSV (memory and throughput) and report the errors."""
        from configurator.safe_files import writable_file, writable_folder
        from configurator.validate import summarize, validate_runs, write_predictions

        check_runs_file(runs)
        if out is not None and out.exists() and not force:
            raise InputError("out", str(out), "exists; pass --force to overwrite")
        if out is not None and out.resolve() == runs.resolve():
            raise InputError("out", str(out), "is the input file")
        if out is not None:
            writable_file(out, "out")
        if report is not None:
            from configurator.report import REPORT_FILES

            if report.exists() and not report.is_dir():
                raise InputError("report", str(report), "is a file, not a folder")
            clash = [f for f in REPORT_FILES if (report / f).exists()]
            if clash and not force:
                raise InputError("report", str(report), f"already holds {clash[0]}; pass --force to overwrite")
            writable_folder(report, "report", create=True)
        constants = _constants(calibration)
        predictions = validate_runs(runs, constants)
        summary = summarize(predictions)
        if out is not None:
            with _writing("out", out):
                write_predictions(predictions, out)
        if report is not None:
            from configurator.report import write_report
            from configurator.safe_files import load_json

            cal_path = calibration or _calibration_path()
            with _writing("report", report):
                write_report(predictions, summary, report, runs=runs,
                             calibration=load_json(cal_path, "calibration") if cal_path.exists() else None)
        if as_json:
            print(json.dumps(summary.as_dict(), indent=2))
            return
        d = summary.as_dict()
        console.print(f"{summary.predicted} of {summary.rows} rows modelled "
                      f"({summary.rows - summary.predicted} with a reason in `error`)")
        t = d["throughput"]
        console.print(f"throughput: {t['predicted_rows']} of {t['measured_rows']} measured rows predicted, median |error| "
                      f"{t['median_abs_error_pct']}%, p90 {t['p90_abs_error_pct']}%, median signed {t['median_error_pct']:+}%")
        console.print(error_table("Throughput (tokens/s/GPU) error by source", t["by_source"], signed=True))
        if t["sweeps"]:
            console.print(f"sweeps: {len(t['sweeps'])} (Spearman below 0.9 in {t['sweeps_below_0_9']}; "
                          f"lowest {t['sweeps_min_spearman']})")
        mem = d["memory"]
        console.print(f"memory: {mem['rows']} rows with a measurement, median |error| "
                      f"{mem['median_abs_error_pct']}%, p90 {mem['p90_abs_error_pct']}%")
        console.print(error_table("Memory error by source", mem["by_source"], signed=False))
        fit = d["fit"]
        console.print(f"fit: {fit['oom_predicted_not_fit']}/{fit['oom_rows']} OOM rows predicted not to fit; "
                      f"{fit['ran_predicted_fit']}/{fit['ran_rows']} rows that ran predicted to fit "
                      f"({fit['recompute_inferred_rows']} with recompute not stated, taken as the least that fits)")
        if fit["wrong"]:
            console.print(f"wrong fit predictions: {', '.join(fit['wrong'])}")
        if out is not None:
            console.print(f"predictions written to {out}")
        if report is not None:
            console.print(f"report written to {report / 'validation.md'}")



    def _calibration_path() -> Path:
        from configurator.cost.constants import calibration_path

        return calibration_path()


    @app.command()
    def calibrate(
        runs: Annotated[Path, typer.Option("--runs", help="Runs CSV with measured throughput (INTERFACE.md columns).")],
        out: Annotated[Optional[Path], typer.Option("--out", help="Where to write the constants (default: profiles/calibration.json).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite --out if it exists.")] = False,
        cross_validate: Annotated[bool, typer.Option("--cv/--no-cv", help="Also report leave-one-source-group-out errors (refits once per group).")] = True,
        workers: Annotated[int, typer.Option("--workers", help="Processes for the cross-validation refits.")] = 2,
        prior: Annotated[str, typer.Option("--prior", help="physical: each constant pulled toward its physical default by its own width (constants.PARAMETERS); weak: one wide prior for all (the fit before per-constant priors).")] = "physical",
        cv_group: Annotated[Optional[str], typer.Option("--cv-group", help="Cross-validate by leaving out only this source group (a publisher, e.g. 'MosaicML llm-foundry'); quicker than every group.")] = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Fit the cost model's named constants to measured runs (least squares on log error)."""
        from configurator.calibrate import PRIORS, calibrate as run_calibration, write_calibration

        from configurator.safe_files import writable_file

        target = out or _calibration_path()
        if target.exists() and not force:
            raise InputError("out", str(target), "exists; pass --force to overwrite")
        check_runs_file(runs)
        writable_file(target, "out")
        say = (lambda msg: None) if as_json else (lambda msg: console.print(f"[dim]{msg}[/dim]"))
        if not 1 <= workers <= MAX_WORKERS:
            raise InputError("workers", workers, f"must be in 1..{MAX_WORKERS}")
        if prior not in PRIORS:
            raise InputError("prior", prior, f"must be one of {', '.join(PRIORS)}")
        result = run_calibration(runs, cross_validate=cross_validate, workers=workers, progress=say, prior=prior,
                                 cv_group=cv_group)
        with _writing("out", target):
            write_calibration(result, target)
        d = result.as_dict()
        if as_json:
            print(json.dumps(d, indent=2))
            return
        table = Table(title=f"Fitted constants ({result.rows} rows) -> {target}")
        for col in ("constant", "value", "default", "bounds"):
            table.add_column(col, justify="left" if col == "constant" else "right", overflow="fold")
        for p in d["parameters"]:
            table.add_row(p["name"], f"{p['value']:.4g}", f"{p['default']:.4g}", f"[{p['lower']:g}, {p['upper']:g}]")
        console.print(table)
        ins = result.in_sample
        console.print(f"in-sample: median |error| {ins['median_abs_error_pct']}%, p90 {ins['p90_abs_error_pct']}%")
        if result.cross_validated:
            cv = result.cross_validated
            console.print(f"cross-validated ({cv['method']}): median |error| {cv['median_abs_error_pct']}%, "
                          f"p90 {cv['p90_abs_error_pct']}%")


    _REPO = Path(__file__).resolve().parent.parent


    @app.command()
    def probe(
        out: Annotated[Path, typer.Option("--out", help="Profile JSON that rank 0 writes.")],
        nodes: Annotated[int, typer.Option("--nodes", help="Nodes taking part.")],
        node_rank: Annotated[int, typer.Option("--node-rank", help="This node's position (static rank: it sets the node order).")],
        master_addr: Annotated[str, typer.Option("--master-addr", help="Address of node rank 0.")],
        nproc_per_node: Annotated[int, typer.Option("--nproc-per-node", help="GPUs (ranks) per node.")] = 8,
        master_port: Annotated[int, typer.Option("--master-port", help="Rendezvous port.")] = 29400,
        sizes_mib: Annotated[str, typer.Option("--sizes-mib", help="Message sizes, MiB.")] = "1,16,64",
        repeat: Annotated[int, typer.Option("--repeat", help="Repeats per measurement (best kept).")] = 2,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds before a stuck transfer fails.")] = 120.0,
        run: Annotated[bool, typer.Option("--exec", help="Run the torchrun line instead of printing it.")] = False,
    ) -> None:
        """Print (or run, with --exec) this node's torchrun line for the cluster probes."""
        import shlex

        from configurator.bounds import MAX_GPUS_PER_NODE, MAX_NODES

        for name, value, limit in (("nodes", nodes, MAX_NODES), ("nproc_per_node", nproc_per_node, MAX_GPUS_PER_NODE),
                                   ("repeat", repeat, 1000)):
            if not 1 <= value <= limit:
                raise InputError(name, value, f"must be in 1..{limit:,}")
        if not 0 < master_port < 65536:
            raise InputError("master_port", master_port, "must be a TCP port")
        if not 0 < timeout <= 86_400:
            raise InputError("timeout", timeout, "must be > 0 and <= 86,400 seconds")
        if not 0 <= node_rank < nodes:
            raise InputError("node_rank", node_rank, f"must be in 0..{nodes - 1}")
        line = [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nodes), "--node-rank", str(node_rank),
                "--nproc-per-node", str(nproc_per_node), "--master-addr", master_addr, "--master-port", str(master_port),
                "-m", "cluster_probes", "--out", str(out), "--sizes-mib", sizes_mib, "--repeat", str(repeat),
                "--timeout", str(timeout)]
        if not run:
            print(shlex.join(line))
            return
        import os

        os.execv(sys.executable, line)


    @app.command()
    def bench(
        check: Annotated[bool, typer.Option("--check", help="Compare with the golden file; exit 1 listing each regression.")] = False,
        update: Annotated[bool, typer.Option("--update", help="Rewrite the golden file (needs --reason, recorded in CHANGELOG.md).")] = False,
        reason: Annotated[Optional[str], typer.Option("--reason", help="Why the golden values change (a model fix, a new scenario).")] = None,
        golden: Annotated[Optional[Path], typer.Option("--golden", help="Golden file (default: benchmarks/golden.json).")] = None,
        scenarios: Annotated[Optional[Path], typer.Option("--scenarios", help="Scenario file (default: benchmarks/scenarios.json).")] = None,
        only: Annotated[Optional[str], typer.Option("--only", help="Run only the scenarios whose name contains this.")] = None,
        calibration: CalibrationOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Run the fixed plan-search scenarios; with --check, fail on plan-quality regressions."""
        from configurator.bench import compare, load_scenarios, run_scenario, summary_row, write_golden

        golden_path = golden or _REPO / "benchmarks" / "golden.json"
        scenario_path = scenarios or _REPO / "benchmarks" / "scenarios.json"
        if update and not (reason and reason.strip()):
            raise InputError("reason", reason or "", "is required with --update (it goes into CHANGELOG.md)")
        if update and only:
            raise InputError("only", only, "cannot be combined with --update (the golden file covers every scenario)")
        if check and not golden_path.exists():
            raise InputError("golden", str(golden_path), "file not found (create it with --update --reason ...)")
        from configurator.safe_files import load_json, writable_file

        load_json(scenario_path, "scenarios")
        if check:
            load_json(golden_path, "golden")
        if update:
            writable_file(golden_path, "golden")
        chosen = [s for s in load_scenarios(scenario_path) if not only or only in s.name]
        if not chosen:
            raise InputError("only", only, "matches no scenario")
        constants = _constants(calibration)
        results = []
        for s in chosen:
            if not as_json:
                console.print(f"[dim]running {s.name}[/dim]")
            results.append(run_scenario(s, constants))
        failures: list[str] = []
        if check:
            failures = compare(results, load_json(golden_path, "golden"), chosen)
        if update:
            with _writing("golden", golden_path):
                write_golden(results, golden_path, reason.strip(), _REPO / "CHANGELOG.md")  # type: ignore[union-attr]
        if as_json:
            print(json.dumps({"scenarios": [{"name": r["name"], "best": r["best"], "reference": r["reference"],
                                             "search": r["search"], "wall_s": r["wall_s"],
                                             "plausibility": r.get("plausibility")} for r in results],
                              "failures": failures}, indent=2))
        else:
            table = Table(title="Plan-search scenarios (modelled)")
            for col in ("scenario", "best plan", "tokens/s/GPU", "reference", "peak GiB", "candidates", "evaluated", "s"):
                table.add_column(col, justify="left" if col in ("scenario", "best plan") else "right", overflow="fold")
            for r in results:
                row = summary_row(r)
                ref = row["reference_tokens_per_s_per_gpu"]
                table.add_row(row["name"], row["best"], f"{row['tokens_per_s_per_gpu'] or 0:,.1f}",
                              f"{ref:,.1f}" if ref else "-", f"{row['peak_gib'] or 0:.1f}", str(row["candidates"]),
                              str(row["evaluated"]), f"{row['wall_s']:.1f}")
            console.print(table)
            _print_plausibility(results)
            for r in results:
                why = (r.get("reference") or {}).get("why_top_plan_is_faster")
                if why:
                    console.print(f"{r['name']}: top plan {why}")
            if update:
                console.print(f"golden file written to {golden_path}; reason recorded in CHANGELOG.md")
            for f in failures:
                console.print(f"[red]regression[/red]: {f}")
            if check and not failures:
                console.print(f"no regressions against {golden_path}")
        if failures:
            raise typer.Exit(1)

    def _check_job_limits(job_timeout: float, job_memory_gib: float, drain: float) -> None:
        """The per-job limits `serve` and `worker` share, each named as its option."""
        if not 0 < job_timeout <= 86_400:
            raise InputError("job-timeout", job_timeout, "must be in (0, 86400] seconds")
        if not 0 <= job_memory_gib <= 4096:
            raise InputError("job-memory-gib", job_memory_gib, "must be in [0, 4096] GiB")
        if not 0 <= drain <= 3600:
            raise InputError("drain", drain, "must be in [0, 3600] seconds")

    def _check_lease(lease: float) -> None:
        if not 1 <= lease <= 3600:
            raise InputError("lease", lease, "must be in [1, 3600] seconds")

    @app.command()
    def serve(
        host: Annotated[str, typer.Option("--host", help="Address to bind (loopback by default).")] = "127.0.0.1",
        port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
        db: Annotated[Optional[str], typer.Option("--db", help="Store URL: sqlite:///FILE (default sqlite:///configurator.db) or postgresql://...")] = None,
        workers: Annotated[int, typer.Option("--workers", help="Search worker processes (0: HTTP only; `configurator worker` processes run the jobs).")] = 2,
        token: Annotated[Optional[str], typer.Option("--token", envvar="CONFIGURATOR_TOKEN", help="Bearer token every request must carry (required off loopback).")] = None,
        max_queue: Annotated[int, typer.Option("--max-queue", help="Jobs that may wait for a worker; more get 429 with Retry-After.")] = 64,
        job_timeout: Annotated[float, typer.Option("--job-timeout", help="Hard wall-clock limit of one job, seconds (the worker is killed).")] = 300.0,
        job_memory_gib: Annotated[float, typer.Option("--job-memory-gib", help="Address space one job may add to its worker, GiB (RLIMIT_AS; 0: no limit).")] = 4.0,
        drain: Annotated[float, typer.Option("--drain", help="On SIGTERM/SIGINT, seconds running jobs may finish before their workers are stopped (their jobs resume at the next start).")] = 10.0,
        access_log: Annotated[bool, typer.Option("--access-log/--no-access-log", help="Log every request (uvicorn's access log) to stderr.")] = False,
        lease: Annotated[float, typer.Option("--lease", help="Seconds a claimed job's lease lasts without a heartbeat; a dead host's jobs are taken over after it.")] = 30.0,
    ) -> None:
        """Run the search service (HTTP API, plan pages) until interrupted."""
        import ipaddress

        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            raise InputError("host", host, "must be an IP address or localhost") from None
        if not loopback and not token:
            raise InputError("host", host, "is not loopback: configure a token (--token or CONFIGURATOR_TOKEN)")
        if not 0 <= workers <= MAX_WORKERS:
            raise InputError("workers", workers, f"must be in 0..{MAX_WORKERS}")
        _check_lease(lease)
        if not 0 < port < 65536:
            raise InputError("port", port, "must be a TCP port")
        if db is not None:
            check_database_url(db, "db", connect=False)  # the service opens (and reports) the store itself
        try:
            import uvicorn

            from configurator.service.app import create_app
        except ImportError:
            raise InputError("serve", "fastapi/uvicorn", "not installed: pip install -e '.[service]'") from None
        if max_queue < 1:
            raise InputError("max-queue", max_queue, "must be >= 1")
        _check_job_limits(job_timeout, job_memory_gib, drain)
        from configurator.service.store import StoreError

        url = db or "sqlite:///configurator.db"
        try:
            app_ = create_app(url, workers=workers, token=token, max_queue=max_queue, job_timeout_s=job_timeout,
                              memory_limit_bytes=int(job_memory_gib * 2**30) or None, drain_s=drain,
                              lease_s=lease)
        except StoreError as exc:  # an environment fault, not bad input: one line, exit 1
            typer.echo(f"configurator: error: store {url.split('@')[-1]}: {exc}", err=True)
            raise typer.Exit(1) from None
        from configurator.service.logs import configure_logging

        configure_logging()
        shown = f"[{host}]" if ":" in host else host
        typer.echo(f"configurator serving on http://{shown}:{port} (store {url.split('@')[-1]}, {workers} workers, "
                   f"queue {max_queue}); Ctrl-C stops it", err=True)
        uvicorn.run(app_, host=host, port=port, log_level="info" if access_log else "warning",
                    access_log=access_log)

    @app.command()
    def worker(
        db: Annotated[str, typer.Option("--db", help="The service's store URL (postgresql://... shared with the servers).")],
        workers: Annotated[int, typer.Option("--workers", help="Search worker processes on this host.")] = 2,
        job_timeout: Annotated[float, typer.Option("--job-timeout", help="Hard wall-clock limit of one job, seconds (the worker is killed).")] = 300.0,
        job_memory_gib: Annotated[float, typer.Option("--job-memory-gib", help="Address space one job may add to its worker, GiB (RLIMIT_AS; 0: no limit).")] = 4.0,
        drain: Annotated[float, typer.Option("--drain", help="On SIGTERM/SIGINT, seconds running jobs may finish before they are stopped and queued again.")] = 10.0,
        lease: Annotated[float, typer.Option("--lease", help="Seconds a claimed job's lease lasts without a heartbeat (the same on every host).")] = 30.0,
        metrics_port: Annotated[Optional[int], typer.Option("--metrics-port", help="Serve Prometheus /metrics on 127.0.0.1:PORT (job seconds of this host, queue and jobs by state).")] = None,
    ) -> None:
        """Run search workers without the HTTP front: claim jobs from the store until SIGTERM/SIGINT."""
        import signal
        import threading

        if not 1 <= workers <= MAX_WORKERS:
            raise InputError("workers", workers, f"must be in 1..{MAX_WORKERS}")
        _check_lease(lease)
        _check_job_limits(job_timeout, job_memory_gib, drain)
        check_database_url(db, "db", connect=False)
        if metrics_port is not None and not 0 < metrics_port < 65536:
            raise InputError("metrics-port", metrics_port, "must be a TCP port")
        try:
            from configurator.service.worker_host import start_worker_host
            from configurator.service.store import StoreError
        except ImportError:
            raise InputError("worker", "sqlalchemy", "not installed: pip install -e '.[service]'") from None
        from configurator.service.logs import configure_logging

        configure_logging()
        try:
            pool = start_worker_host(db, workers=workers, job_timeout_s=job_timeout, lease_s=lease,
                                     memory_limit_bytes=int(job_memory_gib * 2**30) or None,
                                     metrics_port=metrics_port)
        except StoreError as exc:
            typer.echo(f"configurator: error: store {db.split('@')[-1]}: {exc}", err=True)
            raise typer.Exit(1) from None
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        typer.echo(f"configurator worker: {workers} workers claiming jobs from {db.split('@')[-1]}; Ctrl-C stops it",
                   err=True)
        while not stop.wait(1.0):
            pass
        pool.stop(drain)


def _print_plausibility(results: list[dict]) -> None:  # type: ignore[type-arg]
    """bench's plausibility section: each top plan's predicted MFU against the best measured MFU of its
    GPU family and precision in the published runs (configurator/plausibility.py)."""
    table = Table(title="Plausibility: top plan's predicted MFU vs best measured (runs data)")
    for col in ("scenario", "GPU/precision", "predicted MFU %", "best measured %", "run", "excess points", "flag"):
        table.add_column(col, justify="left" if col in ("scenario", "GPU/precision", "run", "flag") else "right")
    for r in results:
        v = r.get("plausibility")
        if not v:
            continue
        best = v["best_measured_mfu"]
        table.add_row(r["name"], v["group"], f"{100 * v['predicted_mfu']:.1f}",
                      f"{100 * best:.1f}" if best is not None else "-", v.get("best_measured_run", "-"),
                      f"{v['excess_points']:+.1f}" if best is not None else "-",
                      "[red]IMPLAUSIBLE (>5 points)[/red]" if v["flagged"] else "ok")
    console.print(table)
