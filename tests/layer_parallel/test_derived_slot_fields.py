"""A non-dict `lp_weight_layout` of a `LayerParallelConfig` is refused by name (audit lc13 #2)."""

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.models.layer_parallel import LayerParallelConfig, convert_to_layer_parallel


def _source_config(**overrides):
    kwargs = dict(
        vocab_size=64, hidden_size=32, intermediate_size=40, num_hidden_layers=6, num_attention_heads=4,
        num_key_value_heads=2, attn_implementation="eager",
    )  # fmt: skip
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """6 source layers, pairs (2, 3) and (4, 5) merged: 4 cache slots; saved."""
    torch.manual_seed(0)
    lp = convert_to_layer_parallel(LlamaForCausalLM(_source_config()).eval(), 2, 6)
    path = tmp_path_factory.mktemp("lp_derived") / "model"
    lp.save_pretrained(path)
    return lp, str(path)


@pytest.mark.parametrize("bad", ["see README", [], 3])
def test_a_non_dict_lp_weight_layout_is_refused_by_name(saved, tmp_path, bad):
    _, path = saved
    # was: AttributeError: 'str' object has no attribute 'get' (and TypeError: 'int' object is not iterable)
    with pytest.raises(TypeError, match="lp_weight_layout must be a dict"):
        LayerParallelConfig(source_config=_source_config(), lp_pairs=[[0, 1]], lp_weight_layout=bad)
    data = json.loads(Path(path, "config.json").read_text())
    data["lp_weight_layout"] = bad
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(TypeError, match="lp_weight_layout must be a dict"):
        AutoConfig.from_pretrained(tmp_path)
