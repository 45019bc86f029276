"""Audit pass 17 (fg17), FOG side: `FogConfig` refuses RoPE scaling numbers that build a NaN / inf rotary table (a NaN
or zero `factor` silently zeroed every attention output under SDPA), naming the key."""

import pytest
import torch

from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
YARN = {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0, "original_max_position_embeddings": 64}
LLAMA3 = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 64}  # fmt: skip
LONGROPE = {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0, "original_max_position_embeddings": 64,
            "short_factor": [1.0] * 8, "long_factor": [2.0] * 8}  # fmt: skip


def _linear(factor):
    return {"rope_type": "linear", "rope_theta": 1e4, "factor": factor}


@pytest.mark.parametrize(
    "rope, match",
    [
        (_linear(float("nan")), r"rope_parameters\['factor'\] must be a finite number > 0, got nan"),
        (_linear(0.0), r"rope_parameters\['factor'\] must be a finite number > 0, got 0.0"),
        (_linear(float("inf")), r"rope_parameters\['factor'\] must be a finite number > 0, got inf"),
        (_linear(-2.0), r"rope_parameters\['factor'\] must be a finite number > 0, got -2.0"),
        (_linear("2"), r"rope_parameters\['factor'\] must be a finite number > 0, got '2'"),
        (_linear(0.5), r"rope_parameters\['factor'\] must be >= 1 for rope_type='linear'"),
        ({**_linear(2.0), "rope_type": "dynamic"} | {"factor": 0.5}, r"must be >= 1 for rope_type='dynamic'"),
        ({**YARN, "attention_factor": float("nan")}, r"rope_parameters\['attention_factor'\] must be a finite"),
        ({**YARN, "attention_factor": 0.0}, r"rope_parameters\['attention_factor'\]"),
        ({**YARN, "beta_fast": float("inf")}, r"rope_parameters\['beta_fast'\]"),
        ({**YARN, "beta_slow": -1.0}, r"rope_parameters\['beta_slow'\]"),
        ({**YARN, "original_max_position_embeddings": 0}, r"rope_parameters\['original_max_position_embeddings'\]"),
        ({**YARN, "mscale": float("nan")}, r"rope_parameters\['mscale'\] must be a finite number"),
        ({**LLAMA3, "low_freq_factor": 0.0}, r"rope_parameters\['low_freq_factor'\]"),
        ({**LLAMA3, "high_freq_factor": float("nan")}, r"rope_parameters\['high_freq_factor'\]"),
        ({**LONGROPE, "short_factor": [1.0] * 7 + [float("nan")]}, r"rope_parameters\['short_factor'\] must be a list"),
        ({**LONGROPE, "long_factor": [0.0] * 8}, r"rope_parameters\['long_factor'\]"),
    ],
)
def test_bad_rope_scaling_numbers_are_refused_by_key(rope, match):
    with pytest.raises(ValueError, match=match):
        FogConfig.fog(**TINY, rope_parameters=rope)


@pytest.mark.parametrize("rope", [_linear(1.0), _linear(4), YARN, {**YARN, "attention_factor": 1.5}, LLAMA3, LONGROPE])
def test_valid_rope_scaling_builds_a_finite_model_and_reloads(tmp_path, rope):
    config = FogConfig.fog(**TINY, max_position_embeddings=128, rope_parameters=dict(rope))
    model = FogForCausalLM(config)
    assert torch.isfinite(model.model.rotary_emb.inv_freq).all()
    model.save_pretrained(tmp_path)
    again = FogForCausalLM.from_pretrained(tmp_path)
    assert again.config.rope_parameters == model.config.rope_parameters
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.isfinite(again(ids).logits).all()
