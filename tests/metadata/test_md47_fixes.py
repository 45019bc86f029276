"""md47: the recipe's document-attention pre-check on hybrid models (attention + state-carrying layers).

The recipe's pre-write probe (`check_documents_kept_apart`) cut the run's config to one layer by assigning
`config.layer_types = config.layer_types[:1]`. Jamba, Bamba and Falcon-H1 derive their layer types from other
fields (a property without setter), so the assignment raised and the pre-check was skipped; a Qwen3-Next whose first
layer is attention got a probe without any linear-attention layer and passed. All were refused only when training
began, after the run record and folders were written. The probe now keeps as many first layers as it takes to hold
every distinct layer type.
"""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from .conftest import run_pre_write_probe

COMMON = dict(
 vocab_size=64, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, intermediate_size=128,
 num_key_value_heads=2,
)  # fmt: skip
MAMBA2 = dict(mamba_n_heads=4, mamba_d_head=32, mamba_d_state=16, mamba_chunk_size=16)
JAMBA = dict(
 expert_layer_period=2, expert_layer_offset=1, num_experts=2, mamba_d_state=8, mamba_dt_rank=8,
 use_mamba_kernels=False,
)  # fmt: skip
QWEN3_NEXT = dict(
 linear_num_value_heads=4, linear_num_key_heads=2, linear_key_head_dim=16, linear_value_head_dim=16,
 num_experts=2, num_experts_per_tok=1, moe_intermediate_size=32, shared_expert_intermediate_size=32, head_dim=16,
)  # fmt: skip


def _pre_check(monkeypatch, tmp_path, config, seen):
    """Run the recipe's pre-write probe on `config` (saved as the run's model); `seen` gets the probe's layer types."""
    run_pre_write_probe(monkeypatch, tmp_path, config, seen, lambda model: list(model.config.layer_types))


@pytest.mark.parametrize(
 "model_type, kwargs, probe_types, name",
 [
     # attention first: layer 0 alone has no Mamba mixer; and the layer_types property has no setter
     ("jamba", dict(attn_layer_period=2, attn_layer_offset=0, **JAMBA), ["full_attention", "linear_attention"],
      "Jamba"),
     ("bamba", dict(attn_layer_indices=[0, 2], **MAMBA2), ["full_attention", "linear_attention"], "Bamba"),
     ("falcon_h1", dict(mamba_d_ssm=128, **MAMBA2), ["hybrid"], "FalconH1"),
     ("qwen3_next", dict(layer_types=["full_attention"] + ["linear_attention"] * 3, **QWEN3_NEXT),
      ["full_attention", "linear_attention"], "Qwen3Next"),
 ],
)  # fmt: skip
def test_the_pre_write_probe_holds_every_layer_type_and_refuses_hybrids(
    monkeypatch, tmp_path, model_type, kwargs, probe_types, name
):
    config = AutoConfig.for_model(model_type, **COMMON, **kwargs)
    seen = []
    with pytest.raises(ValueError, match=rf"{name}ForCausalLM does not keep packed documents apart") as err:
        _pre_check(monkeypatch, tmp_path, config, seen)
    assert "Its layers of type" in str(err.value)
    assert seen == [probe_types]  # the fewest first layers holding each type


def test_the_pre_write_probe_keeps_the_layers_up_to_the_last_new_type(monkeypatch, tmp_path):
    # a linear-attention model whose one full-attention layer comes last: the probe needs all four layers
    types = ["linear_attention"] * 3 + ["full_attention"]
    config = AutoConfig.for_model("qwen3_next", **COMMON, layer_types=types, **QWEN3_NEXT)
    seen = []
    with pytest.raises(ValueError, match="Qwen3NextForCausalLM does not keep packed documents apart"):
        _pre_check(monkeypatch, tmp_path, config, seen)
    assert seen == [types]


def test_an_attention_only_probe_stays_one_layer(monkeypatch, tmp_path):
    config = AutoConfig.for_model("qwen3", **COMMON, layer_types=["full_attention"] * 4, head_dim=16)
    seen = []
    _pre_check(monkeypatch, tmp_path, config, seen)  # accepted
    assert seen == [["full_attention"]]


def test_the_pre_write_probe_cuts_the_per_layer_lists():
    from hf_ext.recipes.metadata_pretrain import _cut_layers, _probe_layers

    config = AutoConfig.for_model(
     "qwen3_next", **{**COMMON, "num_hidden_layers": 6}, **QWEN3_NEXT,
     layer_types=["linear_attention", "linear_attention", "full_attention"] * 2,
 )  # fmt: skip
    assert _probe_layers(config) == 3
    _cut_layers(config, 3)
    assert config.num_hidden_layers == 3
    assert config.layer_types == ["linear_attention", "linear_attention", "full_attention"]
    jamba = AutoConfig.for_model("jamba", **COMMON, attn_layer_period=4, attn_layer_offset=2, **JAMBA)
    assert _probe_layers(jamba) == 3  # mamba, mamba, attention
    _cut_layers(jamba, 3)
    assert jamba.layer_types == ["linear_attention", "linear_attention", "full_attention"]
