"""Parameter counts of every preset against the published totals, and HF config.json parsing."""

from __future__ import annotations

import json
import math

import pytest

from configurator.errors import InputError
from configurator.hf_config import spec_from_hf_dict
from configurator.profiles import load_model, model_names, model_published


def tolerance(published: float) -> float:
    """0.5% of the figure, or half a unit of its last published digit when that is coarser
    (DeepSeek's "37B" active is only known to +-0.5B: it is a rounded figure)."""
    digits = f"{published / 1e9:g}"
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    half_unit = 0.5 * 10 ** (-decimals) * 1e9
    return max(0.005 * published, half_unit + 0.005 * published)


@pytest.mark.parametrize("name", model_names())
def test_total_params_match_published(name: str) -> None:
    spec = load_model(name)
    published, _ = model_published(name)
    assert abs(spec.total_params - published["total_params"]) <= 0.005 * published["total_params"]


@pytest.mark.parametrize("name", [n for n in model_names() if load_model(n).is_moe])
def test_active_params_match_published(name: str) -> None:
    spec = load_model(name)
    published, _ = model_published(name)
    assert abs(spec.active_params - published["active_params"]) <= tolerance(published["active_params"])


def test_llama3_8b_count_by_hand() -> None:
    # embeddings 2 x 128256 x 4096; per layer q,o 4096^2 each, k,v 4096 x 1024 each, MLP 3 x 4096 x 14336,
    # two RMSNorms; final norm.
    per_layer = 2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 + 2 * 4096
    expected = 2 * 128256 * 4096 + 32 * per_layer + 4096
    assert load_model("llama3-8b").total_params == expected == 8_030_261_248


def test_dense_model_active_equals_total() -> None:
    spec = load_model("llama3-70b")
    assert spec.active_params == spec.total_params


def test_deepseek_layer_pattern() -> None:
    spec = load_model("deepseek-v3")
    assert [spec.layer_is_moe(i) for i in range(4)] == [False, False, False, True]
    assert spec.num_moe_layers == 58


HF_CONFIGS = {
    "llama3-8b": {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
                  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                  "vocab_size": 128256, "hidden_act": "silu", "tie_word_embeddings": False},
    "mixtral-8x7b": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
                     "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
                     "vocab_size": 32000, "num_local_experts": 8, "num_experts_per_tok": 2},
    "qwen3-30b-a3b": {"model_type": "qwen3_moe", "hidden_size": 2048, "intermediate_size": 6144,
                      "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4,
                      "head_dim": 128, "vocab_size": 151936, "num_experts": 128, "num_experts_per_tok": 8,
                      "moe_intermediate_size": 768, "decoder_sparse_step": 1, "mlp_only_layers": [],
                      "tie_word_embeddings": False},
    "deepseek-v3": {"model_type": "deepseek_v3", "hidden_size": 7168, "intermediate_size": 18432,
                    "num_hidden_layers": 61, "num_attention_heads": 128, "num_key_value_heads": 128,
                    "vocab_size": 129280, "n_routed_experts": 256, "n_shared_experts": 1,
                    "num_experts_per_tok": 8, "moe_intermediate_size": 2048, "first_k_dense_replace": 3,
                    "moe_layer_freq": 1, "q_lora_rank": 1536, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128, "num_nextn_predict_layers": 1},
}


@pytest.mark.parametrize("preset", sorted(HF_CONFIGS))
def test_hf_config_matches_preset(preset: str) -> None:
    spec = spec_from_hf_dict(HF_CONFIGS[preset], name="config.json")
    ref = load_model(preset)
    assert spec.total_params == ref.total_params
    assert spec.active_params == ref.active_params


def test_gpt2_config() -> None:
    # GPT-2 small: 124.4M parameters (tied LM head, learned positions).
    cfg = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "vocab_size": 50257,
           "n_positions": 1024, "n_inner": None, "resid_pdrop": 0.1}
    spec = spec_from_hf_dict(cfg, name="gpt2")
    assert math.isclose(spec.total_params, 124_439_808, rel_tol=1e-9)


def test_hf_config_file_round_trip(tmp_path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(HF_CONFIGS["llama3-8b"]))
    assert load_model(str(path)).total_params == load_model("llama3-8b").total_params


@pytest.mark.parametrize("cfg, field", [
    ({"model_type": "llama", "hidden_size": 4096}, "num_attention_heads"),
    ({**HF_CONFIGS["llama3-8b"], "num_hidden_layers": -2}, "num_hidden_layers"),
    ({**HF_CONFIGS["llama3-8b"], "num_hidden_layers": 3.5}, "num_hidden_layers"),
    ({**HF_CONFIGS["llama3-8b"], "model_type": "mamba"}, "model_type"),
    ({**HF_CONFIGS["llama3-8b"], "num_key_value_heads": 5}, "num_kv_heads"),
])
def test_bad_hf_config_names_field(cfg: dict, field: str) -> None:
    with pytest.raises(InputError) as err:
        spec_from_hf_dict(cfg, name="config.json")
    assert field in str(err.value)
