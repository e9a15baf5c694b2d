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
  dense first layers, head_dim, sliding-window attention and an MoE preset's linear biases (GPT-OSS:
  head_dim 64, a 128-token window on every other layer, biases) come from the preset with the same shape.
* plan: sharding = the framework's default (Megatron: distributed optimizer; FSDP: zero3;
  DeepSpeed: zero1), sp = on when tp > 1 (NeMo default), dp = GPUs/(tp*pp*cp), etp = 1 (Megatron MoE
  recipes); ``micro_batch`` empty = not stated: 1, except torchtitan, which splits the local batch
  into ``pp`` micro-batches (its default ``pipeline_parallel_microbatches``) or runs it whole without PP;
  ``vpp`` empty with pp > 1 = interleaved with an unstated count (``unknown_vpp``); ``tp_overlap`` /
  ``ep_overlap`` (yes/no, CSV version 2) go to the Plan fields of the same names, empty = None; the MoE
  token dispatcher, which the CSV has no column for, from the notes (``dispatcher_from_notes``: DeepEP /
  HybridEP = ``flex``, "A2A dispatcher" = ``alltoall``), else for Megatron-Bridge performance rows from
  the recipe their notes point to (``recipe_dispatcher``), else None (the runtime's default).
* memory layout: DeepSpeed rows that ran the BF16 optimizer (``uses_bf16_optimizer``) use the
  ``deepspeed-bf16`` layout of profiles/memory.json (``memory_runtime``).
* columns are read by name; only ``REQUIRED_COLUMNS`` must be present (CSV version 2 and later).
* recompute, when empty, is unknown: the recipes pick it per model to fit memory, so the row is
  marked ``recompute_unknown`` and ``validate`` takes the least recompute (none, selective, full)
  under which the run fits, saying so; it reports how many rows needed that.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, replace
from pathlib import Path

from configurator.errors import InputError
from configurator.profiles import cluster_names, load_cluster, load_model, model_names
from configurator.specs.hardware import ClusterSpec
from configurator.specs.job import JobSpec
from configurator.specs.model import ModelSpec
from configurator.specs.plan import Plan, balanced_layout, plan_violations

REQUIRED_COLUMNS = ("run_id", "source", "model", "layers", "hidden", "ffn_hidden", "heads", "vocab", "seq_len",
                    "mlp", "attention", "system", "num_gpus", "global_batch")
"""Without these a row cannot be modelled. Every other column of INTERFACE.md's "Runs CSV" is optional
(absent = empty = unknown); columns are read by name, so later additions do not break the reader."""
OPTIONAL_COLUMNS = ("kv_heads", "moe_experts", "moe_topk", "moe_ffn_hidden", "moe_shared_experts", "gpu", "tp",
                    "pp", "vpp", "cp", "ep", "dp", "sp", "sharding", "recompute", "micro_batch", "precision",
                    "tp_overlap", "ep_overlap", "measured_tokens_per_s_per_gpu", "measured_step_s",
                    "measured_tflops_per_gpu", "measured_mem_gib", "mem_kind", "oom", "notes")
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
    memory_runtime: str = ""
    """The memory layout, where it differs from ``runtime`` (DeepSpeed's BF16 optimizer); '' = runtime."""
    assumptions: tuple[str, ...] = ()
    error: str = ""
    recompute_unknown: bool = False
    sharding_unknown: bool = False
    """The row does not state its sharding (the framework default was taken)."""

    def measured(self, column: str) -> float | None:
        value = self.row.get(column, "").strip()
        return float(value) if value else None

    @property
    def memory_layout(self) -> str:
        """The memory runtime (profiles/memory.json) of the row."""
        return self.memory_runtime or self.runtime

    @property
    def mem_kind(self) -> str:
        return self.row.get("mem_kind", "").strip()

    @property
    def mem_measure(self) -> str:
        """What the measured memory counts: ``allocated`` (max_memory_allocated), ``reserved``
        (max_memory_reserved) or ``device`` (nvidia-smi: reserved + CUDA context + NCCL). torchtitan's
        logged "memory" is ``max_reserved_gib`` (torchtitan/components/metrics.py, the ``memory:``
        field of its log line), whatever the row's label says."""
        kind = self.mem_kind
        if kind == "peak" or (kind == "peak-allocated" and self.runtime == "fsdp"):
            return "reserved"
        if kind == "peak-allocated":
            return "allocated"
        return "device"

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
        return [case_from_row({k: v or "" for k, v in row.items() if k is not None}) for row in reader]


def _int(row: dict[str, str], col: str, default: int | None = None) -> int | None:
    value = (row.get(col) or "").strip()
    if not value:
        return default
    number = float(value)
    if number != int(number):
        raise InputError(col, value, "must be an integer")
    return int(number)


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
    mlp = _cell(row, "mlp")
    attention = _cell(row, "attention")
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
        if preset.head_dim * heads != hidden:
            notes.append(f"head_dim {preset.head_dim} from preset {preset.name} (not hidden/heads = {hidden / heads:g})")
    if preset is not None and preset.linear_bias and not gpt_style and experts:
        kw["linear_bias"] = True  # GPT-OSS: biases on every linear, experts included (its HF config)
        notes.append(f"linear biases from preset {preset.name}")
    windows = tuple(f for f in (preset.features if preset is not None else ())
                    if f.partition("=")[0] in ("sliding_window", "sliding_window_every"))
    features: tuple[str, ...] = ()
    if windows and attention != "mla":
        features = windows
        notes.append(f"sliding-window attention {', '.join(windows)} from preset {preset.name}")  # type: ignore[union-attr]
    if preset is not None and preset.rope_scaling == "yarn" and attention != "mla" and experts:
        kw.update(rope_scaling="yarn", rope_scaling_factor=preset.rope_scaling_factor,
                  rope_original_max_positions=preset.rope_original_max_positions)
        notes.append(f"YaRN rotary embedding from preset {preset.name} (Megatron runs it unfused)")
    clamp = tuple(f for f in (preset.features if preset is not None else ()) if f.startswith("clamped_swiglu"))
    if clamp and mlp == "swiglu":
        features += clamp  # GPT-OSS's swiglu_limit: costed by cost/work.py's unfused_expert_bytes
        notes.append(f"{clamp[0]} from preset {preset.name}")  # type: ignore[union-attr]
    if features:
        kw["features"] = features
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


def _cell(row: dict[str, str], col: str) -> str:
    return (row.get(col) or "").strip()


def _yes_no(row: dict[str, str], col: str) -> bool | None:
    """``yes``/``no`` (also 1/0, true/false) -> True/False; empty = not stated -> None."""
    value = _cell(row, col).lower()
    if not value:
        return None
    if value in ("yes", "1", "true"):
        return True
    if value in ("no", "0", "false"):
        return False
    raise InputError(col, value, "must be yes or no")


def forced_balanced_routing(notes: str) -> bool:
    """The row ran with Megatron's ``--moe-router-force-load-balancing`` (NVIDIA's performance recipes
    benchmark MoE models so; the runs CSV has no column for it and its curators say it in the notes:
    "token distribution force-balanced")."""
    text = notes.lower()
    return "force-balanced" in text or "force_load_balancing" in text or "force-load-balancing" in text


_MODELZOO_H100_QWEN3 = "Megatron-MoE-ModelZoo Qwen3 best-practice results"
"""The Megatron-MoE model zoo's H100 Qwen3 table (README at e865051, first published in commit 8017e11,
examples/qwen3/readme.md). Every one of its Qwen3-235B-A22B rows was launched with
``--moe-router-force-load-balancing``: the commit that published the table gives one command per row
(examples/qwen3/run_235b.sh: the EP32 rows with and without ``--combined-1f1b``, TP4 PP8 VPP4 EP8, the FSDP
row, TP2 PP32 VPP3 EP8), each with that flag, and HEAD's best_practice/qwen3/run_235b.sh keeps it in its
"H100 baseline config". The runs CSV's notes for these rows do not say so (those of the same repository's
GB200/GB300 table do)."""


def recipe_forced_balance(source: str, model_name: str) -> bool:
    """The row's published launch command forces balanced routing though its notes do not say so: the
    Megatron-MoE model zoo's H100 Qwen3-235B-A22B rows (``_MODELZOO_H100_QWEN3``)."""
    return source.startswith(_MODELZOO_H100_QWEN3) and model_name.lower().startswith("qwen3-235b")


def runs_eager(runtime: str, precision: str, notes: str) -> bool:
    """A torchtitan row ran PyTorch eager (``JobSpec.compiled`` False): its tomls default to
    ``compile = false`` and its benchmark tables name compile where it was on ("FSDP + torch.compile").
    Float8 and Async TP rows count as compiled: torchao's float8 training and torchtitan's async TP
    both require ``torch.compile`` (torchtitan docs/float8.md, docs/async_tp.md). "Optimizations: none"
    (the 405B table's bf16 row, whose notes mention Float8 only in a footnote) is eager."""
    if runtime != "fsdp":
        return False
    text = notes.lower()
    if "optimizations: none" in text:
        return True
    return not ("compile" in text or "float8" in text or "async" in text or precision in ("fp8", "fp4"))


_FLEX_WORDS = re.compile(r"\bdeepep\b|\bhybrid-?ep\b|flex (?:token )?dispatcher|dispatcher[ :=_-]*(?:type )?flex\b")
_ALLTOALL_WORDS = re.compile(r"\b(?:a2a|alltoall|all-to-all) (?:token )?dispatcher|dispatcher[ :=_-]*(?:type )?(?:a2a|alltoall)\b")


def dispatcher_from_notes(notes: str) -> str | None:
    """The MoE token dispatcher a row ran, as its notes state it (the runs CSV has no column for it):
    ``flex`` for DeepEP or HybridEP (Megatron's ``--moe-token-dispatcher-type flex``; the Megatron-MoE
    model zoo writes "Dispatcher DeepEP", its GB200 table "HybridEP"), ``alltoall`` for "Dispatcher A2A"
    / "A2A dispatcher"; None when the notes do not say (an "A2A overlap" is not a dispatcher)."""
    text = notes.lower()
    if _FLEX_WORDS.search(text):
        return "flex"
    if _ALLTOALL_WORDS.search(text):
        return "alltoall"
    return None


def _model_key(name: str) -> str:
    """A runs-CSV model name as the recipe tables below key it: lower case, letters and digits only
    ("Qwen3_30B_a3B" -> "qwen330ba3b")."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


_MEGATRON_BRIDGE_FLEX = ("deepseekv3",)
"""Models whose Megatron-Bridge performance recipes all run the flex dispatcher: every DEEPSEEK_V3_* workload
config sets ``moe_flex_dispatcher_backend`` (hybridep; deepep for DeepSeek-V3's B200 FP8_MX/NVFP4 V2 variants),
which ``apply_flex_dispatcher_backend`` turns into ``moe_token_dispatcher_type = flex`` (Megatron-Bridge
scripts/performance/configs/deepseek/deepseek_workload_base_configs.py). Qwen3-235B-A22B's set it on
GB200/GB300 only (alltoall on B200/B300/H100); Qwen3-30B-A3B's and GPT-OSS 120B's depend on the container and
GPU (``_qwen3_30b_dispatcher``, ``_gpt_oss_dispatcher``)."""


def _qwen3_30b_dispatcher(source: str, system: str) -> str:
    """The token dispatcher of a Megatron-Bridge Qwen3-30B-A3B row, read at each container's tag (25.11 =
    v0.2.x, 26.02 = v0.3.0, 26.02.01 = v0.3.1 and later):

    - 25.11 (v0.2.0-v0.2.2, scripts/performance/configs/qwen3/workload_base_configs.py): only the GB200 and
      GB300 configs set ``moe_flex_dispatcher_backend="hybridep"``; ``BASE_QWEN3_30B_A3B_CONFIG`` and the B200
      and H100 configs set none, so ``qwen3_30b_a3b_pretrain_config(moe_flex_dispatcher_backend=None)`` calls
      ``apply_flex_dispatcher_backend`` with None, which logs "Not a valid flex dispatcher backend" and
      returns, leaving ``Qwen3MoEModelProvider.moe_token_dispatcher_type = "alltoall"``
      (src/megatron/bridge/models/qwen/qwen_provider.py): alltoall on B200 and H100.
    - 26.02 (v0.3.0, configs/qwen/qwen3_workload_base_configs.py): GB200, GB300 and B300 hybridep, H100
      ``deepep``, B200 still none (alltoall).
    - 26.02.01 on (v0.3.1: ``BASE_QWEN3_30B_A3B_CONFIG`` gains ``deepep``, every config sets hybridep, and
      qwen3_llm_pretrain.py sets ``moe_token_dispatcher_type = "flex"`` itself; 26.08's perf_recipes/qwen
      likewise): flex on every GPU."""
    container = _bridge_container(source) or (0,)
    gpu = _bridge_gpu(system)
    if container >= (26, 2, 1) or gpu in ("gb200", "gb300"):
        return "flex"
    if container >= (26, 2, 0):
        return "alltoall" if gpu == "b200" else "flex"
    return "alltoall"


def _gpt_oss_dispatcher(source: str, system: str, precision: str, global_batch: int) -> str | None:
    """``flex`` where a Megatron-Bridge GPT-OSS 120B recipe sets the HybridEP backend, else None (the
    alltoall dispatcher that ``gpt_oss_120b_pretrain_config`` sets, ``moe_token_dispatcher_type =
    "alltoall"``), read at each container's tag (runs.py's container map: 26.04 = v0.4.0, 26.04.01 =
    v0.4.2, 26.08 = v0.6.0):

    - 26.04 (v0.4.0, scripts/performance/configs/gpt_oss/gpt_oss_workload_base_configs.py): the GBS-1280
      ("V2") configs of GB200, B200 and B300 set ``moe_flex_dispatcher_backend="hybridep"``. v0.4.2 (26.04.01)
      drops it for GB200 and B200 ("switch GPT-OSS GB200/B200 V2 dispatcher default to alltoall", commits
      ee3d3068b and 78934c150: the summary's GB200 row went 15,938 -> 16,640 tokens/s/GPU) and keeps it for
      B300, as v0.5.x (26.06) does, where the GB300 FP8_MX V2 config sets it too.
    - 26.08 (v0.6.0, src/megatron/bridge/perf_recipes/gpt_oss/common.py
      ``_apply_gpt_oss_120b_full_iter_fp8mx_configs``, applied by the GB200 and GB300 fp8 configs):
      ``moe_token_dispatcher_type = "flex"`` with ``moe_flex_dispatcher_backend = "hybridep"``.
    - 25.11 (v0.2.x) and 26.02 (v0.3.x): no GPT-OSS config sets a backend."""
    container = _bridge_container(source)
    if container is None:
        return None
    gpu, fp8 = _bridge_gpu(system), precision in ("fp8", "fp4")
    v2 = global_batch == 1280
    if container >= (26, 8, 0):
        return "flex" if fp8 and gpu in ("gb200", "gb300") else None
    if (26, 4, 0) <= container < (26, 4, 1):
        return "flex" if v2 and gpu in ("gb200", "b200", "b300") else None
    if (26, 4, 1) <= container < (26, 8, 0):
        return "flex" if v2 and (gpu == "b300" or (gpu == "gb300" and fp8 and container >= (26, 6, 0))) else None
    return None


def recipe_dispatcher(source: str, model_name: str, system: str, precision: str = "",
                      global_batch: int = 0) -> str | None:
    """The dispatcher of a Megatron-Bridge performance-summary row whose notes do not say, from the recipe
    its notes point to ("see scripts/performance recipes"); None for other sources and models (and for
    the recipes that leave it at alltoall)."""
    if "megatron-bridge performance" not in source.lower():
        return None
    key = _model_key(model_name)
    if key in _MEGATRON_BRIDGE_FLEX:
        return "flex"
    if key == "qwen3235ba22b":
        return "flex" if system.startswith(("gb200", "gb300")) else "alltoall"
    if key == "qwen330ba3b":
        return _qwen3_30b_dispatcher(source, system)
    if key == "gptoss120b":
        return _gpt_oss_dispatcher(source, system, precision, global_batch)
    return None


HYBRIDEP_RECIPE_SMS = 32
"""SMs of HybridEP's dispatch and combine kernels in Megatron-Bridge's performance recipes: every release sets
``moe_hybridep_num_sms = 32`` when the backend is hybridep (25.11 = v0.2.x scripts/performance/utils/helpers.py
``set_common_perf_overrides``; 26.02-26.06 utils/overrides.py ``_set_common_perf_overrides``; 26.08 = v0.6.0
src/megatron/bridge/perf_recipes/_common.py ``_benchmark_common``), against DeepEP's default of 20."""


def recipe_flex_sms(source: str, model_name: str, system: str, dispatcher: str | None) -> int:
    """SMs the flex dispatcher of a Megatron-Bridge performance row holds (``JobSpec.flex_dispatcher_sms``):
    ``HYBRIDEP_RECIPE_SMS`` where the recipe's backend is HybridEP: on GB200/GB300, where every flex recipe is
    HybridEP (``apply_flex_dispatcher_backend`` runs DeepEP only on Ampere, Hopper, B200 and B300, in every
    release from v0.2.0 to v0.6.0), and in Qwen3-30B-A3B's recipes from 26.02.01 (v0.3.1 on: every GPU's
    config sets hybridep, ``_qwen3_30b_dispatcher``); 0 (DeepEP's default) for other rows, whose backend on
    B200/B300/H100 varies by model and release."""
    container = _bridge_container(source)
    if dispatcher != "flex" or container is None:
        return 0
    if _bridge_gpu(system) in ("gb200", "gb300"):
        return HYBRIDEP_RECIPE_SMS
    return HYBRIDEP_RECIPE_SMS if _model_key(model_name) == "qwen330ba3b" and container >= (26, 2, 1) else 0


_GRAPH_NOTE = re.compile(r"cuda graphs? \(([^)]*)\)")
_GRAPH_WORD_SCOPES = (("full", "full_iteration"), ("attn", "attn"), ("router", "moe_router"),
                      ("preprocess", "moe_preprocess"))


def graphs_from_notes(notes: str) -> tuple[str, ...] | None:
    """CUDA-graph scopes a row's notes state ("CUDA graphs (attn, router, preprocess)", the Megatron-MoE
    model zoo's GB200 table), as ``JobSpec.cuda_graphs``; None when the notes do not say."""
    match = _GRAPH_NOTE.search(notes.lower())
    if not match:
        return None
    words = match.group(1)
    return tuple(scope for word, scope in _GRAPH_WORD_SCOPES if word in words)


_ATTN_ROUTER_PRE = ("attn", "moe_router", "moe_preprocess")
_ROUTER_PRE = ("moe_router", "moe_preprocess")


def recipe_cuda_graphs(source: str, model_name: str, system: str, precision: str) -> tuple[str, ...]:
    """CUDA-graph scopes of a Megatron-Bridge performance-summary row, from the recipe of the container its
    source names (``cuda_graph_impl`` / ``cuda_graph_scope`` in scripts/performance/configs/*/
    *_workload_base_configs.py at the release the container ships: v0.2.0 for 25.11, v0.3.x for 26.02,
    v0.4.x for 26.04; src/megatron/bridge/perf_recipes/* for 26.08). What they set, for the rows we have:

    - 26.08, MXFP8 on GB200/GB300 (DeepSeek-V3, Qwen3, GPT-OSS 120B): ``full_iteration``
      (``_enable_*_full_iteration_mxfp8``, with ``moe_expert_rank_capacity_factor`` 1.5).
    - Qwen3-30B-A3B: GB300/B300 router + preprocess; GB200 attn + router + preprocess in bf16/FP8-CS,
      router + preprocess in FP8-MX (the Blackwell fp8 of the tables); B200 router + preprocess until
      26.02, attn + router + preprocess from 26.02.01; H100 router + preprocess in bf16, none in FP8-CS.
      ``full_iteration`` in FP8-MX (``_qwen3_30b_full_iteration``) from 26.06 on GB200, GB300 and B300 and
      from 26.06.01 on B200.
    - Qwen3-235B-A22B: GB200 attn + router + preprocess; GB300 router + preprocess; B200/B300/H100 none.
    - DeepSeek-V3: GB300 attn + router + preprocess (fp8 only in 25.11: from 26.02 its fp8 scope is empty
      with no graph impl); GB200 router + preprocess in 25.11, attn + router + preprocess from 26.02;
      B200 attn + router + preprocess in 26.04.01's MXFP8 V2 config (PP8 VP2 EP32, the table's row), else
      none; B300/H100 none.
    - GPT-OSS 120B: GB300/B300 attn + router + preprocess; GB200/B200/H100 none.

    () for other sources and models (eager launches)."""
    container = _bridge_container(source)
    if container is None:
        return ()
    key = _model_key(model_name)
    gpu = _bridge_gpu(system)
    fp8 = precision in ("fp8", "fp4")
    if container >= (26, 8, 0) and fp8 and gpu in ("gb200", "gb300") and key in (
            "deepseekv3", "qwen330ba3b", "qwen3235ba22b", "gptoss120b"):
        return ("full_iteration",)
    if key == "qwen330ba3b":
        if fp8 and _qwen3_30b_full_iteration(container, gpu):
            return ("full_iteration",)
        if gpu == "gb200":
            return _ROUTER_PRE if fp8 else _ATTN_ROUTER_PRE
        if gpu == "b200":
            return _ATTN_ROUTER_PRE if container >= (26, 2, 1) else _ROUTER_PRE
        if gpu in ("gb300", "b300"):
            return _ROUTER_PRE
        return () if fp8 else _ROUTER_PRE
    if key == "qwen3235ba22b":
        return {"gb200": _ATTN_ROUTER_PRE, "gb300": _ROUTER_PRE}.get(gpu, ())
    if key == "deepseekv3":
        if gpu == "gb300":
            return _ATTN_ROUTER_PRE if (not fp8 or container < (26, 2, 0)) else ()
        if gpu == "gb200":
            return _ROUTER_PRE if container < (26, 2, 0) else _ATTN_ROUTER_PRE
        if gpu == "b200" and fp8 and container == (26, 4, 1):
            return _ATTN_ROUTER_PRE  # v0.4.2's DEEPSEEK_V3_PRETRAIN_CONFIG_B200_FP8_MX_V2 (PP8 VP2 EP32, GBS 4096)
        return ()
    if key == "gptoss120b" and gpu in ("gb300", "b300"):
        return _ATTN_ROUTER_PRE
    return ()


def _qwen3_30b_full_iteration(container: tuple[int, ...], gpu: str) -> bool:
    """Whether Qwen3-30B-A3B's MXFP8 recipe of a container captures the full iteration: v0.5.0 (26.06) sets
    ``cuda_graph_impl="full_iteration"`` with ``moe_a2a_overlap=True``, ``cutedsl_fused_grouped_mlp=True`` and
    ``fp8_dot_product_attention=True`` in QWEN3_30B_A3B_PRETRAIN_CONFIG_{GB200,GB300,B300}_FP8_MX_V1
    (scripts/performance/configs/qwen/qwen3_workload_base_configs.py), v0.5.1 (26.06.01) in B200's too, and
    v0.6.0 (26.08) calls ``_enable_hybridep_full_iteration_mxfp8`` in the fp8mx configs of all four
    (src/megatron/bridge/perf_recipes/qwen/{gb200,gb300,b200,b300}/qwen3_moe.py)."""
    if container >= (26, 6, 1) and gpu == "b200":
        return True
    return container >= (26, 6, 0) and gpu in ("gb200", "gb300", "b300")


def _bridge_container(source: str) -> tuple[int, ...] | None:
    """The NeMo container (26, 4, 1) a Megatron-Bridge performance-summary row names; None for other rows."""
    if "megatron-bridge performance" not in source.lower():
        return None
    found = re.search(r"nemo (\d+)\.(\d+)(?:\.(\d+))?", source.lower())
    return tuple(int(x or 0) for x in found.groups()) if found else None


def _bridge_gpu(system: str) -> str:
    """The GPU a recipe table keys on, from the row's system (``dgx-b200`` -> ``b200``, ``gb200-nvl72`` ->
    ``gb200``)."""
    return system.lower().removeprefix("dgx-").split("-")[0]


_GPT_OSS_RECOMPUTE = ("layernorm", "moe_act")


def _gpt_oss_recompute_modules(source: str, model_name: str, system: str) -> tuple[str, ...]:
    """Selective recompute modules of a Megatron-Bridge GPT-OSS 120B row whose table leaves recompute out
    ("Recompute/SP not listed (see scripts/performance recipes)"): the GB200, B200 and H100 workload configs
    set ``recompute_modules=["layernorm", "moe_act"]`` in every release the rows come from
    (scripts/performance/configs/gpt_oss/workload_base_configs.py at v0.2.0 for 25.11, and
    gpt_oss_workload_base_configs.py at v0.3.x and v0.4.x for 26.02 and 26.04: the V2 GBS-1280 configs
    inherit them from V1); GB300 and B300 recompute nothing. () for other rows (26.08's perf_recipes reset
    the fp8 GB200 list, so they are not claimed here)."""
    container = _bridge_container(source)
    if (container is None or _model_key(model_name) != "gptoss120b" or not (25, 11, 0) <= container < (26, 8, 0)
            or _bridge_gpu(system) not in ("gb200", "b200", "h100")):
        return ()
    return _GPT_OSS_RECOMPUTE


def _gpt_oss_ep_overlap(source: str, model_name: str, system: str, global_batch: int) -> bool:
    """Whether a Megatron-Bridge GPT-OSS 120B row overlapped its expert all-to-all with computation: the
    GB200 GBS-1280 ("V2") workload config sets ``moe_a2a_overlap=True`` from v0.4.0 (26.04) through v0.5.x
    (26.06) (gpt_oss_workload_base_configs.py; ``_set_moe_a2a_overlap_overrides`` turns it into
    ``overlap_moe_expert_parallel_comm`` with ``delay_wgrad_compute``), not in v0.3.x (26.02); other GPUs
    and the GBS-512 configs leave it off."""
    container = _bridge_container(source)
    return (container is not None and (26, 4, 0) <= container < (26, 8, 0) and global_batch == 1280
            and _model_key(model_name) == "gptoss120b" and _bridge_gpu(system) == "gb200")


def recipe_fused_expert_mlp(source: str, model_name: str, system: str, precision: str) -> bool:
    """Whether a Megatron-Bridge row's experts ran Transformer Engine's fused grouped MLP
    (``JobSpec.fused_expert_mlp``): 26.08's MXFP8 GPT-OSS 120B recipes for GB200 and GB300 set
    ``use_transformer_engine_op_fuser = True`` (perf_recipes/gpt_oss/common.py,
    ``_apply_gpt_oss_120b_full_iter_fp8mx_configs``) and ``NVTE_CUTEDSL_FUSED_GROUPED_MLP=1`` (their
    ``env_vars``), which Megatron-Core's ``TEGroupedMLP._is_fused_impl_supported`` needs, with a Transformer
    Engine that has ``ScaledClampedQGeGLU`` and ``GroupedLinear(scale_bias=...)`` (the one 26.08 pins,
    4329ff8). Earlier containers have no such path for a clamped GLU (Megatron-Core 0.15-0.18). Qwen3-30B-A3B's
    MXFP8 full-iteration recipes (``_qwen3_30b_full_iteration``: ``cutedsl_fused_grouped_mlp=True`` from 26.06,
    ``use_transformer_engine_op_fuser = True`` in 26.08's ``_enable_hybridep_full_iteration_mxfp8``) run it too;
    for a plain SwiGLU the step model has no unfused expert kernels to remove (cost/work.py)."""
    container = _bridge_container(source)
    if container is None or precision not in ("fp8", "fp4"):
        return False
    if _model_key(model_name) == "qwen330ba3b":
        return _qwen3_30b_full_iteration(container, _bridge_gpu(system))
    return (container >= (26, 8, 0) and _model_key(model_name) == "gptoss120b"
            and _bridge_gpu(system) in ("gb200", "gb300"))


def recipe_fp8_attention(source: str, model_name: str, system: str, precision: str) -> bool:
    """Whether a Megatron-Bridge row ran fp8 attention (``JobSpec.fp8_attention``): 26.08's (v0.6.0)
    MXFP8 full-iteration recipes set ``mixed_precision.fp8_dot_product_attention = True`` for Qwen3 on
    GB200 and GB300 (perf_recipes/qwen/common.py ``_enable_hybridep_full_iteration_mxfp8``), GPT-OSS 120B
    on GB200 and GB300 (perf_recipes/gpt_oss/common.py ``_apply_gpt_oss_120b_full_iter_fp8mx_configs``) and
    DeepSeek-V3 on GB300 only (perf_recipes/deepseek/gb300/deepseek_v3.py passes
    ``fp8_dot_product_attention=True`` to ``_enable_deepseek_full_iteration_mxfp8``; the GB200 config leaves
    its default, False). The containers of the other rows (25.11 = v0.2.x, 26.02 = v0.3.x, 26.04 = v0.4.x)
    set it nowhere in scripts/performance."""
    if "full_iteration" not in recipe_cuda_graphs(source, model_name, system, precision):
        return False
    return not (_model_key(model_name) == "deepseekv3" and _bridge_gpu(system) != "gb300")


_A2A_OVERLAP_LAYOUTS: tuple[tuple[tuple[int, int, int], tuple[int, int, int], str, str, tuple[int, int, int, int]], ...] = (
    ((25, 11, 0), (26, 8, 0), "qwen3235ba22b", "h100", (2, 8, 4, 32)),
    ((25, 11, 0), (26, 2, 0), "qwen330ba3b", "h100", (1, 2, 12, 8)),
    ((25, 11, 0), (25, 11, 0), "qwen3235ba22b", "b200", (1, 8, 4, 8)),
    ((26, 4, 1), (26, 4, 1), "deepseekv3", "b200", (1, 8, 2, 32)),
)
"""(first container, last container, model, GPU, (tp, pp, vpp, ep)) of the Megatron-Bridge performance
configs that set ``moe_a2a_overlap=True`` before 26.08, read at each container's release tag
(scripts/performance/configs/*/*workload_base_configs.py; 25.11 = v0.2.1/v0.2.2, 26.02 = v0.3.0,
26.02.01 = v0.3.1, 26.04 = v0.4.0, 26.04.01 = v0.4.2, 26.08 = v0.6.0): Qwen3-235B-A22B H100 TP2 PP8 VP4
EP32 (every release), Qwen3-30B-A3B H100 PP2 VP12 EP8 (until 26.02; 26.02.01 moved to EP16 without PP),
Qwen3-235B-A22B B200 PP8 VP4 EP8 (25.11), DeepSeek-V3 B200 MXFP8 V2 PP8 VP2 EP32 with DeepEP (26.04.01
only; earlier B200 configs are PP16 EP8 without it). A row takes the overlap only when its layout is the
config's, since the summary tables sometimes list other layouts than the shipped config."""


def recipe_ep_overlap(source: str, model_name: str, system: str, precision: str,
                      layout: tuple[int, int, int, int], global_batch: int) -> bool:
    """Whether a Megatron-Bridge performance-summary row ran the MoE all-to-all overlap
    (``moe_a2a_overlap`` -> ``overlap_moe_expert_parallel_comm = True`` with ``delay_wgrad_compute = True``,
    scripts/performance/utils/helpers.py ``set_moe_a2a_overlap_overrides``): Megatron-Core's 1F1B
    schedule then runs one micro-batch's dispatch/combine beside another's attention and expert GEMMs.
    From 26.08 every MXFP8 full-iteration-graph recipe on GB200/GB300 (DeepSeek-V3, Qwen3, GPT-OSS 120B)
    sets it (``_enable_deepseek_full_iteration_mxfp8``, ``_enable_hybridep_full_iteration_mxfp8``,
    ``_apply_gpt_oss_120b_full_iter_fp8mx_configs`` in src/megatron/bridge/perf_recipes); before, the
    configs in ``_A2A_OVERLAP_LAYOUTS`` and GPT-OSS 120B's GB200 GBS-1280 config (``_gpt_oss_ep_overlap``).
    False for every other source, model and layout."""
    container = _bridge_container(source)
    if container is None:
        return False
    if "full_iteration" in recipe_cuda_graphs(source, model_name, system, precision):
        return True
    if _gpt_oss_ep_overlap(source, model_name, system, global_batch):
        return True
    key, gpu = _model_key(model_name), _bridge_gpu(system)
    return any(first <= container <= last and key == k and gpu == g and layout == lay
               for first, last, k, g, lay in _A2A_OVERLAP_LAYOUTS)


_Layout = tuple[int, int, int, int]
_SHIPPED_LAYOUTS: tuple[tuple[tuple[int, int, int], str, str, _Layout, _Layout], ...] = (
    ((26, 2, 1), "qwen330ba3b", "h100", (1, 2, 12, 8), (1, 1, 1, 16)),
)
"""(container, model, GPU, the table's (tp, pp, vpp, ep), the shipped config's) where a Megatron-Bridge
performance-summary table lists a layout its release's config does not run. 26.02.01's H100 Qwen3-30B-A3B row
lists TP1 PP2 VP12 EP8 (9,058 tokens/s/GPU), but v0.3.1's ``QWEN3_30B_A3B_PRETRAIN_CONFIG_H100_FP8_CS_V1``
(scripts/performance/configs/qwen/qwen3_workload_base_configs.py) sets ``expert_model_parallel_size=16``
without pipelining (hybridep, ``moe_a2a_overlap=False``): the PP2 VP12 EP8 config was v0.3.0's (26.02), whose
table gives 5,113 for it, and the EP16 rows of 26.04, 26.04.01 and 26.06 (8,901, 8,960, 8,826) match 9,058."""


def shipped_layout(source: str, model_name: str, system: str,
                  layout: tuple[int, int, int, int]) -> tuple[int, int, int, int] | None:
    """(tp, pp, vpp, ep) the row's shipped recipe ran where its table lists another (``_SHIPPED_LAYOUTS``);
    None for every other row."""
    container = _bridge_container(source)
    if container is None:
        return None
    key, gpu = _model_key(model_name), _bridge_gpu(system)
    return next((shipped for c, k, g, table, shipped in _SHIPPED_LAYOUTS
                 if c == container and k == key and g == gpu and table == layout), None)


def recipe_vpp(source: str, model_name: str) -> int | None:
    """Virtual pipeline stages a DGX Cloud Benchmarking row ran with where the README table it was read from
    says otherwise: the v25.04.01 nemotron recipe's table gives Nemotron-4 340B's VP as "NA" (read as vpp 1),
    but its launch.sh sets ``VP=12`` for 340b and passes ``-vp $VP`` (later releases' tables list VP 12 for
    the same TP8 PP8 MBS1 configs). None for every other row."""
    if "dgx cloud" in source.lower() and _model_key(model_name) == "nemotron4340b":
        return 12
    return None


_DGXC_TOKEN_DROP = "dgx cloud benchmarking recipe (deepseek_v3)"
"""DGX Cloud Benchmarking's v25.05 DeepSeek-V3 pre-training recipe (dgxc-benchmarking tag v25.05,
deepseek_v3/pretraining: NeMo commit 7a8f1cc, container 25.04.01) runs NeMo's
scripts/performance/llm/pretrain_deepseek_v3.py, which sets ``USE_TOKEN_DROP = True``: the
``MegatronTokenDropCallback`` with its defaults, ``moe_expert_capacity_factor = 1.0`` and
``moe_pad_expert_input_to_capacity = True`` (which it allows only with the alltoall dispatcher). The same
script puts ``64 // pp - 1`` layers on the first pipeline stage and ``64 // pp - 2`` on the last."""


def _dgxc_v2505(source: str, notes: str) -> bool:
    """A row of DGX Cloud Benchmarking's v25.05 DeepSeek-V3 recipe (``_DGXC_TOKEN_DROP``)."""
    return _DGXC_TOKEN_DROP in source.lower() and "v25.05" in notes.lower()


def recipe_routing(source: str, notes: str, pp: int, layers: int) -> tuple[str | None, tuple[int, ...]]:
    """(routing, pipeline layout) of a row whose recipe fixes them but whose notes do not say: DGX Cloud's
    v25.05 DeepSeek-V3 rows run capacity-padded token drop (``_DGXC_TOKEN_DROP``) and the recipe's uneven
    split; (None, ()) otherwise."""
    if not _dgxc_v2505(source, notes):
        return None, ()
    layout: tuple[int, ...] = ()
    if pp > 1 and 64 % pp == 0:
        middle = 64 // pp
        split = (middle - 1, *([middle] * (pp - 2)), middle - 2)
        if sum(split) == layers:
            layout = split
    return "capacity_padded", layout


_DGXC_RECOMPUTE_MODULES = {"gb200": ("core_attn",), "h100": ("mla_up_proj",)}
"""Selective-recompute modules of DGX Cloud's v25.05 DeepSeek-V3 recipe per GPU: its launch.sh sets
``RM='core_attn'`` for gb200 and ``RM='mla_up_proj'`` for h100 and passes ``--recompute_modules $RM``; NeMo's
pretrain_deepseek_v3.py (commit 7a8f1cc) sets ``recompute_granularity = "selective"`` and the utils'
``set_primary_perf_configs`` takes the list (NeMo's recommended_model_configs/model_configs_*.csv at that
commit give the same). The README tables of later tags (v25.07) list them as a RecomputeModule column."""


def _dgxc_recompute_modules(source: str, notes: str, system: str) -> tuple[str, ...]:
    """Selective-recompute modules a row's recipe runs where the row does not state its recompute: DGX Cloud's
    v25.05 DeepSeek-V3 rows (``_DGXC_RECOMPUTE_MODULES``); () for every other row."""
    return _DGXC_RECOMPUTE_MODULES.get(_bridge_gpu(system), ()) if _dgxc_v2505(source, notes) else ()


_DEEPSEEK_RECOMPUTE: tuple[tuple[tuple[int, int, int], tuple[int, int, int], str, str, _Layout | None,
                                 tuple[str, ...]], ...] = (
    ((25, 11, 0), (25, 11, 0), "gb300", "bf16", None, ("moe_act",)),
    ((25, 11, 0), (25, 11, 0), "gb200", "", None, ("mla_up_proj",)),
    ((25, 11, 0), (25, 11, 0), "b200", "", None, ("mla_up_proj",)),
    ((25, 11, 0), (25, 11, 0), "h100", "", None, ("mla_up_proj", "mlp")),
    ((26, 4, 0), (26, 4, 1), "b300", "", (1, 16, 1, 8), ("mla_up_proj",)),
    ((26, 4, 0), (26, 4, 1), "b200", "", (1, 16, 1, 8), ("mla_up_proj",)),
    ((26, 4, 1), (26, 4, 1), "b200", "fp8", (1, 8, 2, 32), ("mla_up_proj", "mlp")),
    ((26, 8, 0), (26, 8, 0), "gb200", "fp8", (1, 4, 4, 64), ("mla_up_proj",)),
)
"""(first container, last container, GPU, precision ('' = any), (tp, pp, vpp, ep) or None = any, modules) of
Megatron-Bridge's DeepSeek-V3 performance configs, whose recipes run ``recompute_granularity = "selective"``
(``set_deepseek_v3_common_configs``; 26.08's ``_deepseek_v3_common``) with these ``recompute_modules``:
25.11 = v0.2.x scripts/performance/configs/deepseek/workload_base_configs.py (GB300 ``moe_act``, GB200 and B200
``mla_up_proj``, H100 ``mla_up_proj`` + ``mlp``; one config per GPU, applied by ``set_recompute_overrides``);
26.04/26.04.01 = v0.4.0/v0.4.2 deepseek_workload_base_configs.py (B300 and B200 V1, PP16 EP8: ``mla_up_proj``;
v0.4.2's B200 FP8_MX V2, PP8 VP2 EP32: ``mla_up_proj`` + ``mlp``); 26.08 = v0.6.0
src/megatron/bridge/perf_recipes/deepseek/gb200/deepseek_v3.py (fp8mx PP4 VP4 EP64: ``mla_up_proj``; GB300's
fp8mx sets none). Where a later config depends on the layout, a row takes it only with the config's layout.
25.11's tables list layouts of their own (GB300: PP2 VP4 EP32 against the config's PP4 VP4 EP64), run with
overrides of the one config per GPU, whose modules are taken. 25.11's GB300 ``moe_act`` is taken for bf16 rows
only: the plan check refuses ``moe_act`` recompute under fp8 (``recompute.FP8_DELAYED_NO_RECOMPUTE``, Megatron's
delayed scaling), though that row ran MXFP8, which allows it."""


def _deepseek_recompute_modules(source: str, model_name: str, system: str, precision: str,
                                layout: _Layout | None) -> tuple[str, ...]:
    """Selective-recompute modules of a Megatron-Bridge DeepSeek-V3 row (``_DEEPSEEK_RECOMPUTE``); () otherwise."""
    container = _bridge_container(source)
    if container is None or _model_key(model_name) != "deepseekv3":
        return ()
    gpu, fp8 = _bridge_gpu(system), precision in ("fp8", "fp4")
    for first, last, g, prec, lay, modules in _DEEPSEEK_RECOMPUTE:
        if (first <= container <= last and g == gpu and prec in ("", "fp8" if fp8 else "bf16")
                and (lay is None or lay == layout)):
            return modules
    return ()


def recipe_recompute_modules(source: str, notes: str, model_name: str, system: str, precision: str = "",
                             layout: _Layout | None = None) -> tuple[str, ...]:
    """Selective-recompute modules a row's recipe runs where the row does not state its recompute: DGX Cloud's
    v25.05 DeepSeek-V3 rows (``_dgxc_recompute_modules``), Megatron-Bridge's GPT-OSS 120B rows
    (``_gpt_oss_recompute_modules``) and DeepSeek-V3 rows (``_deepseek_recompute_modules``, given the row's
    precision and (tp, pp, vpp, ep)); () for every other row."""
    return (_dgxc_recompute_modules(source, notes, system) or _gpt_oss_recompute_modules(source, model_name, system)
            or _deepseek_recompute_modules(source, model_name, system, precision, layout))


def uses_bf16_optimizer(source: str, notes: str) -> bool:
    """DeepSpeed's BF16_Optimizer (fp32 gradient accumulator): the final BLOOM-176B setup - the tr11
    production README, and topology rows whose notes say they ran it."""
    return "bloom-176b training readme" in source.lower() or "bf16 optimizer" in notes.lower()


def unknown_vpp(layers: int, pp: int) -> int:
    """Virtual stages of an interleaved schedule whose count the source does not state, chosen as
    Megatron-Bridge's recipes do: the most chunks that keep at least 4 layers per virtual stage (Llama-3
    70B: PP4 VPP5), with an even split; 2 when no even split exists."""
    best = 0
    for v in range(2, layers // pp + 1):
        if layers % (pp * v) == 0 and layers // (pp * v) >= 4:
            best = v
    return best or 2


def unknown_micro_batch(runtime: str, gbs: int, dp: int, pp: int) -> tuple[int, str]:
    """Micro-batch of a row that does not state it, as the framework chooses it."""
    local = max(1, gbs // dp)
    if runtime == "fsdp":
        if pp > 1:
            # torchtitan: pipeline_parallel_microbatches defaults to the number of stages; the local
            # batch is split into that many micro-batches.
            mb = max(1, local // pp)
            return mb, f"micro_batch={mb} (not stated: torchtitan splits the local batch {local} into pp={pp} micro-batches)"
        return local, f"micro_batch={local} (not stated: torchtitan runs the local batch {local} at once)"
    return 1, "micro_batch=1 (not stated)"


def case_from_row(row: dict[str, str]) -> RunCase:
    run_id = _cell(row, "run_id")
    source = _cell(row, "source")
    runtime = runtime_for_source(source)
    base = RunCase(run_id=run_id, source=source, row=dict(row), runtime=runtime)
    try:
        model, notes = model_from_row(row)
        memory_runtime = ""
        if runtime == "deepspeed" and uses_bf16_optimizer(source, _cell(row, "notes")):
            memory_runtime = "deepspeed-bf16"
            notes.append("DeepSpeed BF16 optimizer (fp32 gradient accumulator)")
        system = _cell(row, "system")
        if system not in cluster_names():
            raise InputError("system", system, "is not a shipped cluster preset")
        num_gpus = _int(row, "num_gpus")
        if num_gpus is None:
            raise InputError("num_gpus", "", "is empty")
        cluster = load_cluster(system, num_gpus=num_gpus)
        gpu = _cell(row, "gpu")
        if gpu and gpu != cluster.gpu.key:
            notes.append(f"gpu {gpu} differs from {system}'s {cluster.gpu.key}; using the system")
        seq_len, gbs = _int(row, "seq_len"), _int(row, "global_batch")
        if seq_len is None or gbs is None:
            raise InputError("seq_len" if seq_len is None else "global_batch", "", "is empty")
        precision = _cell(row, "precision") or "bf16"
        routing = "force_balanced" if forced_balanced_routing(_cell(row, "notes")) else "learned"
        recipe_layout: tuple[int, ...] = ()
        if routing == "force_balanced" and model.is_moe:
            notes.append("MoE routing force-balanced (benchmark mode): no learned-routing imbalance")
        elif model.is_moe and recipe_forced_balance(source, _cell(row, "model")):
            routing = "force_balanced"
            notes.append("MoE routing force-balanced: the model zoo's launch command for this table passes "
                         "--moe-router-force-load-balancing (examples/qwen3/run_235b.sh at 8017e11)")
        elif model.is_moe:
            by_recipe, recipe_layout = recipe_routing(source, _cell(row, "notes"), _int(row, "pp", 1) or 1,
                                                      model.num_layers)
            if by_recipe:
                routing = by_recipe
                notes.append("MoE token drop, capacity factor 1.0, padded to capacity (the recipe's "
                             "MegatronTokenDropCallback): every expert runs the mean load; alltoall dispatcher")
        eager = runs_eager(runtime, precision, _cell(row, "notes"))
        if eager:
            notes.append("PyTorch eager (torchtitan's default; the row names no compile/Float8/Async TP)")
        stated = graphs_from_notes(_cell(row, "notes"))
        graphs = stated if stated is not None else recipe_cuda_graphs(source, row.get("model", ""), system, precision)
        if graphs:
            said = "the notes" if stated is not None else "the recipe"
            notes.append(f"CUDA graphs {'+'.join(graphs)} (from {said}): captured kernels cost one replay each")
        fused_mlp = model.is_moe and recipe_fused_expert_mlp(source, row.get("model", ""), system, precision)
        if fused_mlp:
            notes.append("experts as Transformer Engine's fused grouped MLP (the recipe's op fuser)")
        fp8_attention = recipe_fp8_attention(source, row.get("model", ""), system, precision)
        if fp8_attention:
            notes.append("fp8 attention (the recipe's fp8_dot_product_attention)")
        job = JobSpec(global_batch=gbs, seq_len=seq_len, precision=precision, moe_routing=routing,
                      compiled=not eager, cuda_graphs=graphs, fused_expert_mlp=fused_mlp,
                      fp8_attention=fp8_attention)
        dispatcher, said = None, ""
        if model.is_moe:
            dispatcher, said = dispatcher_from_notes(_cell(row, "notes")), "the notes"
            if dispatcher is None:
                dispatcher, said = recipe_dispatcher(source, row.get("model", ""), system, precision, gbs), "the recipe"
            if dispatcher is None and routing == "capacity_padded":
                dispatcher = "alltoall"  # the token-drop callback allows only the alltoall dispatcher
        if dispatcher == "flex" and (_int(row, "ep", 1) or 1) > 1:
            notes.append(f"MoE dispatcher flex (DeepEP/HybridEP, from {said})")
            flex_sms = recipe_flex_sms(source, row.get("model", ""), system, dispatcher)
            if flex_sms:
                job = replace(job, flex_dispatcher_sms=flex_sms)
                notes.append(f"HybridEP on {flex_sms} SMs (the recipe's moe_hybridep_num_sms)")
        elif dispatcher == "flex":
            dispatcher = None  # no expert parallelism: nothing to dispatch across ranks
        tp, pp, cp = (_int(row, c, 1) or 1 for c in ("tp", "pp", "cp"))
        dp = _int(row, "dp")
        ep = _int(row, "ep", 1) or 1
        shipped = shipped_layout(source, _cell(row, "model"), system, (tp, pp, _int(row, "vpp", 1) or 1, ep))
        if shipped is not None:
            tp, pp, shipped_vpp, ep = shipped
            dp = num_gpus // (tp * pp * cp)
            row = {**row, "vpp": str(shipped_vpp)}
            listed = "/".join(_cell(base.row, c) for c in ("tp", "pp", "vpp", "ep"))
            notes.append(f"TP{tp} PP{pp} EP{ep} dp={dp} (the release's shipped config; the table lists {listed})")
        if dp is None:
            dp = num_gpus // (tp * pp * cp)
            notes.append(f"dp={dp} from GPUs/(tp*pp*cp)")
        sp_cell = _cell(row, "sp")
        sp = (sp_cell == "1") if sp_cell else tp > 1
        if not sp_cell:
            notes.append(f"sp={'on' if sp else 'off'} (default: on when tp > 1)")
        if sp and tp == 1:
            sp = False  # Megatron turns SP off at tp=1
        sharding = _cell(row, "sharding")
        if not sharding:
            sharding = DEFAULT_SHARDING[runtime]
            notes.append(f"sharding={sharding} ({runtime} default)")
        recompute = _cell(row, "recompute") or "none"
        recipe_modules = () if _cell(row, "recompute") else recipe_recompute_modules(
            source, _cell(row, "notes"), row.get("model", ""), system, precision,
            (tp, pp, _int(row, "vpp", 1) or 1, ep))
        if recipe_modules:
            recompute = "selective"
            notes.append(f"recompute selective {','.join(recipe_modules)} (the recipe's)")
        mb = _int(row, "micro_batch")
        if mb is None:
            mb, why = unknown_micro_batch(runtime, gbs, dp, pp)
            notes.append(why)
        vpp = _int(row, "vpp")
        launched = recipe_vpp(source, _cell(row, "model"))
        if launched is not None and launched != vpp:
            notes.append(f"vpp={launched} (the recipe's launch script; the CSV says {vpp})")
            vpp = launched
        if vpp is None:
            vpp = unknown_vpp(model.num_layers, pp) if pp > 1 else 1
            if pp > 1:
                notes.append(f"vpp={vpp} (interleaved, count not stated: most chunks with >= 4 layers each)")
        layout: tuple[int, ...] = ()
        if recipe_layout and vpp == 1:
            layout = recipe_layout
            notes.append(f"pipeline split {'/'.join(map(str, layout))} (the recipe's: first 64/pp-1, last 64/pp-2)")
        elif model.num_layers % (pp * vpp):
            layout = balanced_layout(model.num_layers, pp, vpp)
            notes.append(f"uneven pipeline split {'/'.join(map(str, layout))} (ends lighter)")
        ep_overlap = _yes_no(row, "ep_overlap") if model.is_moe else None
        if ep_overlap is None and model.is_moe and recipe_ep_overlap(source, row.get("model", ""), system, precision,
                                                                     (tp, pp, vpp, ep), gbs):
            ep_overlap = True
            notes.append("MoE all-to-all overlap (the recipe's moe_a2a_overlap: 1F1B EP overlap, delayed wgrad)")
        plan = Plan(tp=tp, pp=pp, dp=dp, cp=cp, ep=ep, etp=1, vpp=vpp, sp=sp,
                    sharding=sharding, recompute=recompute, recompute_modules=recipe_modules,
                    micro_batch=mb, pipeline_layers=layout,
                    tp_overlap=_yes_no(row, "tp_overlap") if tp > 1 else None,
                    ep_overlap=ep_overlap, ep_dispatcher=dispatcher)
        reasons = plan_violations(model, job, plan, cluster.num_gpus)
        if reasons:
            raise InputError("plan", plan.describe(), reasons[0])
        return replace(base, model=model, cluster=cluster, job=job, plan=plan, memory_runtime=memory_runtime,
                       assumptions=tuple(notes), recompute_unknown=not (_cell(row, "recompute") or recipe_modules),
                       sharding_unknown=not _cell(row, "sharding"))
    except (InputError, ValueError) as exc:
        return replace(base, error=str(exc))


__all__ = ["HYBRIDEP_RECIPE_SMS", "MEM_KINDS", "REQUIRED_COLUMNS", "RunCase", "case_from_row", "dispatcher_from_notes",
           "graphs_from_notes", "read_runs", "recipe_cuda_graphs", "recipe_dispatcher", "recipe_ep_overlap",
           "recipe_flex_sms", "recipe_fp8_attention", "recipe_fused_expert_mlp",
           "recipe_recompute_modules", "recipe_routing", "recipe_vpp", "runs_eager",
           "runtime_for_source", "shipped_layout", "unknown_micro_batch", "unknown_vpp", "uses_bf16_optimizer"]
