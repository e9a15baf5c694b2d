"""Read a runs CSV (INTERFACE.md "Runs CSV") into specs, one ``RunCase`` per row.

A row we cannot model yields a ``RunCase`` whose ``error`` says why; rows are never dropped.
Empty cells take the default of the framework the source used, and every such choice is recorded
in ``assumptions`` (the data README asks for exactly that):

* framework (the memory ``runtime``) from the source: torchtitan runs PyTorch FSDP, MosaicML runs
  llm-foundry (FSDP with a fused loss); BigScience BLOOM ran Megatron-DeepSpeed; NeMo,
  Megatron-Bridge and DGX Cloud recipes run Megatron-Core with NeMo's performance settings; the
  Megatron-LM papers of 2021/2022 (Narayanan, Korthikanti) the Megatron-LM of their day (no flash
  attention, no overlap flags: ``megatron-2021``); the rest (MCore READMEs) Megatron-LM's defaults.
* model details the CSV does not carry: GELU models are GPT-style (LayerNorm with biases, tied
  embeddings, dropout), SwiGLU models Llama-style (RMSNorm, no biases, untied); MLA dimensions,
  dense first layers and head_dim come from the preset with the same shape, if any.
* plan: sharding = the framework's default (Megatron: distributed optimizer; FSDP: zero3;
  DeepSpeed: zero1), sp = on when tp > 1 (NeMo default), dp = GPUs/(tp*pp*cp), micro_batch = 1,
  etp = 1 (Megatron MoE recipes).
* recompute, when empty, is unknown: the recipes pick it per model to fit memory, so the row is
  marked ``recompute_unknown`` and ``validate`` takes the least recompute (none, selective, full)
  under which the run fits, saying so; it reports how many rows needed that.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, replace
from pathlib import Path

from configurator.errors import InputError
from configurator.profiles import cluster_names, load_cluster, load_model, model_names
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan, balanced_layout, plan_violations

REQUIRED_COLUMNS = ("run_id", "source", "model", "layers", "hidden", "ffn_hidden", "heads", "kv_heads",
                    "vocab", "seq_len", "mlp", "attention", "moe_experts", "moe_topk", "moe_ffn_hidden",
                    "moe_shared_experts", "gpu", "system", "num_gpus", "tp", "pp", "vpp", "cp", "ep",
                    "dp", "sp", "sharding", "recompute", "micro_batch", "global_batch", "precision",
                    "measured_tokens_per_s_per_gpu", "measured_step_s", "measured_tflops_per_gpu",
                    "measured_mem_gib", "mem_kind", "oom", "notes")
MEM_KINDS = ("peak", "peak-allocated", "nvidia-smi")
DEFAULT_SHARDING = {"megatron": "distopt", "megatron-2021": "none", "nemo": "distopt", "fsdp": "zero3", "llm-foundry": "zero3",
                    "deepspeed": "zero1"}


@dataclass(frozen=True, kw_only=True, slots=True)
class RunCase:
    run_id: str
    source: str
    row: dict[str, str]
    model: ModelSpec | None = None
    cluster: ClusterSpec | None = None
    job: JobSpec | None = None
    plan: Plan | None = None
    runtime: str = "megatron"
    assumptions: tuple[str, ...] = ()
    error: str = ""
    recompute_unknown: bool = False

    def measured(self, column: str) -> float | None:
        value = self.row.get(column, "").strip()
        return float(value) if value else None

    @property
    def mem_kind(self) -> str:
        return self.row.get("mem_kind", "").strip()

    @property
    def oom(self) -> bool:
        return self.row.get("oom", "").strip() == "1"


def runtime_for_source(source: str) -> str:
    """The framework (memory runtime) a source's runs used; see the module docstring."""
    s = source.lower()
    if "torchtitan" in s:
        return "fsdp"
    if "mosaicml" in s or "llm-foundry" in s:
        return "llm-foundry"
    if "bigscience" in s or "bloom" in s:
        return "deepspeed"
    if "nemo" in s or "megatron-bridge" in s or "dgx cloud" in s:
        return "nemo"
    if "narayanan" in s or "korthikanti" in s:
        return "megatron-2021"
    return "megatron"


def read_runs(path: Path) -> list[RunCase]:
    try:
        handle = path.open(newline="")
    except FileNotFoundError:
        raise InputError("runs", str(path), "file not found") from None
    except OSError as exc:
        raise InputError("runs", str(path), f"cannot read file ({exc.strerror})") from None
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError("runs", str(path), f"missing column {missing[0]!r}")
        return [case_from_row(row) for row in reader]


def _int(row: dict[str, str], col: str, default: int | None = None) -> int | None:
    value = (row.get(col) or "").strip()
    if not value:
        return default
    number = float(value)
    if number != int(number):
        raise InputError(col, value, "must be an integer")
    return int(number)


def _overlap(row: dict[str, str], col: str) -> bool | None:
    """A stated overlap setting (runs CSV version 2: yes/no; empty = the runtime's default)."""
    cell = (row.get(col) or "").strip().lower()
    if cell in ("yes", "1", "true", "on"):
        return True
    if cell in ("no", "0", "false", "off"):
        return False
    return None


def _matching_preset(layers: int, hidden: int, experts: int) -> ModelSpec | None:
    for name in model_names():
        spec = load_model(name)
        if spec.num_layers == layers and spec.hidden_size == hidden and spec.num_experts == experts:
            return spec
    return None


def model_from_row(row: dict[str, str]) -> tuple[ModelSpec, list[str]]:
    notes: list[str] = []
    layers, hidden = _int(row, "layers"), _int(row, "hidden")
    heads, vocab, ffn = _int(row, "heads"), _int(row, "vocab"), _int(row, "ffn_hidden")
    for col, val in (("layers", layers), ("hidden", hidden), ("heads", heads), ("vocab", vocab),
                     ("ffn_hidden", ffn)):
        if val is None:
            raise InputError(col, "", "is empty; the model shape cannot be built")
    assert layers and hidden and heads and vocab and ffn
    mlp = row["mlp"].strip()
    attention = row["attention"].strip()
    experts = _int(row, "moe_experts", 0) or 0
    preset = _matching_preset(layers, hidden, experts)
    gpt_style = mlp == "gelu"
    kw: dict[str, object] = dict(
        name=row["model"], num_layers=layers, hidden_size=hidden, ffn_hidden_size=ffn,
        num_attention_heads=heads, vocab_size=vocab, mlp=mlp, attention=attention,
        norm="layernorm" if gpt_style else "rmsnorm", linear_bias=gpt_style, tied_embeddings=gpt_style,
        dropout=gpt_style)
    if attention == "mla":
        source = preset or load_model("deepseek-v3")
        kw.update(num_kv_heads=heads, q_lora_rank=source.q_lora_rank, kv_lora_rank=source.kv_lora_rank,
                  qk_nope_head_dim=source.qk_nope_head_dim, qk_rope_head_dim=source.qk_rope_head_dim,
                  v_head_dim=source.v_head_dim)
        notes.append(f"MLA dimensions from preset {source.name}")
    else:
        kv = _int(row, "kv_heads", heads)
        kw["num_kv_heads"] = kv
    if preset is not None and preset.head_dim:
        kw["head_dim"] = preset.head_dim
    if experts:
        kw.update(num_experts=experts, moe_topk=_int(row, "moe_topk"),
                  moe_ffn_hidden_size=_int(row, "moe_ffn_hidden"))
        shared = _int(row, "moe_shared_experts", 0) or 0
        if shared:
            kw.update(num_shared_experts=shared,
                      shared_expert_ffn_hidden_size=shared * int(kw["moe_ffn_hidden_size"]))  # type: ignore[arg-type]
        if preset is not None and preset.first_dense_layers:
            kw["first_dense_layers"] = preset.first_dense_layers
            notes.append(f"first {preset.first_dense_layers} layers dense (preset {preset.name})")
    notes.append("GPT-style (LayerNorm, biases, tied, dropout)" if gpt_style
                 else "Llama-style (RMSNorm, no biases, untied)")
    return ModelSpec(**kw), notes  # type: ignore[arg-type]


def case_from_row(row: dict[str, str]) -> RunCase:
    run_id = row.get("run_id", "").strip()
    source = row.get("source", "").strip()
    runtime = runtime_for_source(source)
    base = RunCase(run_id=run_id, source=source, row=dict(row), runtime=runtime)
    try:
        model, notes = model_from_row(row)
        system = row["system"].strip()
        if system not in cluster_names():
            raise InputError("system", system, "is not a shipped cluster preset")
        num_gpus = _int(row, "num_gpus")
        if num_gpus is None:
            raise InputError("num_gpus", "", "is empty")
        cluster = load_cluster(system, num_gpus=num_gpus)
        gpu = row["gpu"].strip()
        if gpu and gpu != cluster.gpu.key:
            notes.append(f"gpu {gpu} differs from {system}'s {cluster.gpu.key}; using the system")
        seq_len, gbs = _int(row, "seq_len"), _int(row, "global_batch")
        if seq_len is None or gbs is None:
            raise InputError("seq_len" if seq_len is None else "global_batch", "", "is empty")
        precision = row["precision"].strip() or "bf16"
        job = JobSpec(global_batch=gbs, seq_len=seq_len, precision=precision)
        tp, pp, cp = (_int(row, c, 1) or 1 for c in ("tp", "pp", "cp"))
        dp = _int(row, "dp")
        if dp is None:
            dp = num_gpus // (tp * pp * cp)
            notes.append(f"dp={dp} from GPUs/(tp*pp*cp)")
        sp_cell = row["sp"].strip()
        sp = (sp_cell == "1") if sp_cell else tp > 1
        if not sp_cell:
            notes.append(f"sp={'on' if sp else 'off'} (default: on when tp > 1)")
        if sp and tp == 1:
            sp = False  # Megatron turns SP off at tp=1
        sharding = row["sharding"].strip()
        if not sharding:
            sharding = DEFAULT_SHARDING[runtime]
            notes.append(f"sharding={sharding} ({runtime} default)")
        recompute = row["recompute"].strip() or "none"
        mb = _int(row, "micro_batch")
        if mb is None:
            mb = 1
            notes.append("micro_batch=1 (not stated)")
        vpp = _int(row, "vpp", 1) or 1
        layout: tuple[int, ...] = ()
        if model.num_layers % (pp * vpp):
            layout = balanced_layout(model.num_layers, pp, vpp)
            notes.append(f"uneven pipeline split {'/'.join(map(str, layout))} (ends lighter)")
        plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, ep=_int(row, "ep", 1) or 1, etp=1, vpp=vpp, sp=sp,
                    sharding=sharding, recompute=recompute, micro_batch=mb, pipeline_layers=layout,
                    tp_overlap=_overlap(row, "tp_overlap") if tp > 1 else None,
                    ep_overlap=_overlap(row, "ep_overlap") if model.is_moe else None)
        reasons = plan_violations(model, job, plan, cluster.num_gpus)
        if reasons:
            raise InputError("plan", plan.describe(), reasons[0])
        return replace(base, model=model, cluster=cluster, job=job, plan=plan,
                       assumptions=tuple(notes), recompute_unknown=not row["recompute"].strip())
    except (InputError, ValueError) as exc:
        return replace(base, error=str(exc))


__all__ = ["MEM_KINDS", "RunCase", "case_from_row", "read_runs", "runtime_for_source"]
