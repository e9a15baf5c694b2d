"""Hugging Face families beyond Llama/Qwen/DeepSeek: parameter counts against published sizes, and what the
loader records about each network (fixtures: the architecture keys of the public config.json files)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from configurator.errors import InputError
from configurator.hf_config import SUPPORTED, load_hf_config, spec_from_hf_dict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hf"

# Published total parameters (model cards / HF safetensors totals), billions.
PUBLISHED_B = {
    "gemma2-9b": 9.24,            # google/gemma-2-9b: 9.24B
    "gemma3-1b": 1.0,             # google/gemma-3-1b-pt: 1B (999,885,952)
    "phi3-mini": 3.82,            # microsoft/Phi-3-mini-4k-instruct: 3.8B
    "olmo2-7b": 7.30,             # allenai/OLMo-2-1124-7B: 7.3B
    "olmo3-7b": 7.30,             # allenai/Olmo-3-1025-7B: 7B class (7.3B safetensors)
    "nemotron-mini-4b": 4.19,     # nvidia/Nemotron-Mini-4B-Instruct: 4.19B
    "granite-3.1-8b": 8.17,       # ibm-granite/granite-3.1-8b-base: 8.17B
    "granite-3.0-1b-a400m": 1.33,  # ibm-granite/granite-3.0-1b-a400m-base: 1.33B total, 400M active
    "glm4-9b-0414": 9.40,         # THUDM/GLM-4-9B-0414: 9.4B
    "glm4.5-air": 106.0,          # zai-org/GLM-4.5-Air: 106B total (MTP layer excluded), 12B active
    "exaone-4.0-32b": 32.0,       # LGAI-EXAONE/EXAONE-4.0-32B: 32.0B
    "gpt-oss-20b": 20.9,          # openai/gpt-oss-20b: 20.9B total, 3.6B active
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_B))
def test_parameter_count_matches_the_published_size(name: str) -> None:
    spec = load_hf_config(FIXTURES / f"{name}.json")
    assert spec.total_params / 1e9 == pytest.approx(PUBLISHED_B[name], rel=0.01)


def test_active_parameters_of_the_moe_families() -> None:
    granite = load_hf_config(FIXTURES / "granite-3.0-1b-a400m.json")
    assert granite.active_params / 1e9 == pytest.approx(0.40, rel=0.1)  # "a400m"
    air = load_hf_config(FIXTURES / "glm4.5-air.json")
    non_embedding = air.active_params - air.embedding_params - air.lm_head_params
    assert non_embedding / 1e9 == pytest.approx(12.0, rel=0.02)  # "12B active"


def test_the_loader_records_what_changes_the_network() -> None:
    air = load_hf_config(FIXTURES / "glm4.5-air.json")
    assert (air.mtp_layers, air.moe_router_score, air.moe_router_expert_bias, air.qkv_bias) == (1, "sigmoid", True, True)
    assert air.rope_percent == 0.5 and air.first_dense_layers == 1
    gemma = load_hf_config(FIXTURES / "gemma2-9b.json")
    assert (gemma.activation, gemma.norm_placement, gemma.tied_embeddings) == ("gelu_tanh", "sandwich", True)
    assert "attn_logit_softcapping=50.0" in gemma.features
    nemotron = load_hf_config(FIXTURES / "nemotron-mini-4b.json")
    assert (nemotron.mlp, nemotron.norm, nemotron.norm_zero_centered) == ("relu2", "layernorm", True)
    olmo = load_hf_config(FIXTURES / "olmo2-7b.json")
    assert (olmo.norm_placement, olmo.qk_norm_full_width, olmo.rope_base) == ("post", True, 500000.0)
    oss = load_hf_config(FIXTURES / "gpt-oss-20b.json")
    assert oss.rope_scaling == "yarn" and oss.rope_scaling_factor == 32 and "attention_sinks" in oss.features
    qwen2 = spec_from_hf_dict({"model_type": "qwen2", "hidden_size": 896, "num_hidden_layers": 24,
                               "num_attention_heads": 14, "num_key_value_heads": 2, "intermediate_size": 4864,
                               "vocab_size": 151936, "rope_theta": 1000000.0, "tie_word_embeddings": True,
                               "sliding_window": 32768, "use_sliding_window": False}, name="qwen2-0.5b")
    assert qwen2.qkv_bias and qwen2.features == () and qwen2.total_params / 1e9 == pytest.approx(0.494, rel=0.01)
    deepseek = spec_from_hf_dict({"model_type": "deepseek_v3", "hidden_size": 7168, "num_hidden_layers": 61,
                                  "num_attention_heads": 128, "intermediate_size": 18432, "vocab_size": 129280,
                                  "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                                  "qk_rope_head_dim": 64, "v_head_dim": 128, "n_routed_experts": 256,
                                  "n_shared_experts": 1, "num_experts_per_tok": 8, "moe_intermediate_size": 2048,
                                  "first_k_dense_replace": 3, "moe_layer_freq": 1, "n_group": 8, "topk_group": 4,
                                  "routed_scaling_factor": 2.5, "scoring_func": "sigmoid", "topk_method": "noaux_tc",
                                  "norm_topk_prob": True, "num_nextn_predict_layers": 1, "rope_theta": 10000,
                                  "rope_scaling": {"type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
                                                   "mscale": 1.0, "mscale_all_dim": 1.0, "beta_fast": 32, "beta_slow": 1},
                                  "aux_loss_alpha": 0.001, "seq_aux": True, "rms_norm_eps": 1e-6}, name="ds3")
    from configurator import load_model

    preset = load_model("deepseek-v3")
    for field in ("mtp_layers", "moe_router_score", "moe_router_expert_bias", "moe_router_num_groups",
                  "moe_router_group_topk", "moe_routed_scaling_factor", "rope_scaling", "rope_scaling_factor",
                  "rope_mscale_all_dim", "moe_aux_loss_coeff", "moe_aux_loss_type", "norm_eps", "total_params"):
        assert getattr(deepseek, field) == getattr(preset, field), field


def test_an_unknown_model_type_is_one_line_listing_what_is_supported(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "mamba2"}))
    with pytest.raises(InputError) as err:
        load_hf_config(path)
    message = str(err.value)
    assert "\n" not in message and "mamba2" in message
    for kind in ("gemma2", "phi3", "olmo3", "nemotron", "granitemoe", "glm4_moe", "exaone4", "gpt_oss"):
        assert kind in SUPPORTED and kind in message


def test_megatron_refuses_what_it_cannot_express_by_name() -> None:
    from configurator import JobSpec, Plan, load_cluster
    from configurator.emit import EmitRequest, files_for

    for name, field in (("gemma2-9b", "model.features"), ("olmo2-7b", "model.norm_placement"),
                        ("gpt-oss-20b", "model.features")):
        request = EmitRequest(model=load_hf_config(FIXTURES / f"{name}.json"), cluster=load_cluster("dgx-h100", num_gpus=8),
                              job=JobSpec(global_batch=8, seq_len=4096), plan=Plan(dp=8))
        with pytest.raises(InputError) as err:
            files_for(request, "megatron")
        assert err.value.field == field, (name, err.value)
    ok = EmitRequest(model=load_hf_config(FIXTURES / "nemotron-mini-4b.json"), cluster=load_cluster("dgx-h100", num_gpus=8),
                     job=JobSpec(global_batch=8, seq_len=4096), plan=Plan(dp=8))
    args = files_for(ok, "megatron")["megatron_args.txt"].split()
    assert "--squared-relu" in args and "--apply-layernorm-1p" in args and args[args.index("--rotary-percent") + 1] == "0.5"
