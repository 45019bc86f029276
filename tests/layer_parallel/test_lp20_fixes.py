"""Fixes of the lp20 audit.

F1 A setting of the source model given at the top level of a LayerParallelConfig (`rope_parameters`,
   `attention_dropout`, `hidden_act`, ...) was stored there and ignored: `LayerParallelConfig(source_config=llama_cfg,
   lp_pairs=..., rope_parameters=...)` built a model computing the unscaled function and saved an inert top-level
   copy; `from_pretrained(path, rope_parameters=...)` raised a raw `TypeError` in the model's `__init__` (the keyword
   reached the constructor), while the same keyword on the source model's folder is applied. Such a keyword now goes
   into the source config, through the same checks as `source_config={key: ...}`: the saved weight layout refuses
   one that changes the weights (`attention_bias`). Setting one on a built config is refused by name; a top-level copy in a file saved before
   the fix stays ignored, with a warning.
"""

import json
import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.models.layer_parallel import LayerParallelConfig, convert_to_layer_parallel
from hf_ext.models.layer_parallel.modeling_layer_parallel import LayerParallelForCausalLM

_SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
# no rope_theta: the source config class completes it, as for `source_config={"rope_parameters": ...}`
_SCALING = {"rope_type": "linear", "factor": 4.0}
_PAIRS = [[1, 2]]


def _llama(**settings):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**_SHAPE, **settings)).eval()


def _ids():
    return torch.randint(0, 64, (1, 48), generator=torch.Generator().manual_seed(1))


def _logits(model):
    with torch.no_grad():
        return model(_ids()).logits


@pytest.fixture(scope="module")
def scaled_reference():
    """Logits of the layer-paired conversion of the RoPE-scaled Llama, and of the unscaled one."""
    scaled = _llama(rope_parameters=_SCALING)
    plain = _llama()
    ref, unscaled = (
        _logits(convert_to_layer_parallel(scaled, pairs=_PAIRS)),
        _logits(convert_to_layer_parallel(plain, pairs=_PAIRS)),
    )
    assert (ref - unscaled).abs().max() > 1e-4  # the scaling changes the function on 48 positions
    return ref


@pytest.mark.parametrize("as_dict", [False, True])
def test_constructor_keyword_goes_to_the_source_config(scaled_reference, as_dict, tmp_path):
    plain = _llama()
    source = plain.config.to_dict() if as_dict else plain.config
    config = LayerParallelConfig(
        source_config=source, lp_pairs=_PAIRS, rope_parameters=_SCALING, attention_dropout=0.0
    )
    assert config.source_config.rope_parameters["rope_type"] == "linear"
    assert config.source_config.rope_parameters["factor"] == 4.0
    assert plain.config.rope_parameters["rope_type"] == "default"  # the source model's own config is untouched
    model = LayerParallelForCausalLM(config).eval()
    model.load_state_dict(convert_to_layer_parallel(plain, pairs=_PAIRS).state_dict())
    torch.testing.assert_close(_logits(model), scaled_reference, rtol=0, atol=1e-5)
    # saved once, in the source config: no inert top-level copy
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert "rope_parameters" not in saved and "attention_dropout" not in saved
    assert saved["source_config"]["rope_parameters"]["rope_type"] == "linear"
    torch.testing.assert_close(
        _logits(AutoModelForCausalLM.from_pretrained(tmp_path)), scaled_reference, rtol=0, atol=1e-5
    )


def test_from_pretrained_keyword_goes_to_the_source_config(scaled_reference, tmp_path):
    plain = _llama()
    convert_to_layer_parallel(plain, pairs=_PAIRS).save_pretrained(tmp_path / "lp")
    plain.save_pretrained(tmp_path / "llama")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lp", rope_parameters=_SCALING).eval()
    assert model.config.source_config.rope_parameters["rope_type"] == "linear"
    torch.testing.assert_close(_logits(model), scaled_reference, rtol=0, atol=1e-5)
    # as for the source model's own folder
    llama = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", attention_dropout=0.25)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "lp", attention_dropout=0.25)
    assert model.config.source_config.attention_dropout == llama.config.attention_dropout == 0.25
    config = LayerParallelConfig.from_pretrained(tmp_path / "lp", hidden_act="gelu")
    assert config.source_config.hidden_act == "gelu" and "hidden_act" not in config.to_dict()


def test_keyword_that_changes_the_saved_weights_is_refused_by_name(tmp_path):
    convert_to_layer_parallel(_llama(), pairs=_PAIRS).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"source\.attention_bias: saved False -> now True.*from_pretrained` keyword"):
        AutoModelForCausalLM.from_pretrained(tmp_path, attention_bias=True)
    with pytest.raises(
        ValueError, match=r"num_hidden_layers of a LayerParallelConfig is derived.*source_config=\{'num_hidden_layers'"
    ):
        LayerParallelConfig(source_config=_llama().config, lp_pairs=_PAIRS, num_hidden_layers=6)


def test_setting_a_source_setting_on_a_built_config_is_refused():
    config = LayerParallelConfig(source_config=_llama().config, lp_pairs=_PAIRS)
    with pytest.raises(
        ValueError, match=r"rope_parameters is a setting of the source model.*source_config=\{'rope_parameters'"
    ):
        config.rope_parameters = _SCALING
    assert "rope_parameters" not in config.__dict__


def test_top_level_copy_in_an_old_file_stays_ignored_with_a_warning(tmp_path, caplog):
    plain = _llama()
    convert_to_layer_parallel(plain, pairs=_PAIRS).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    saved = json.loads(path.read_text())
    saved["rope_parameters"] = {**_SCALING, "rope_theta": 10000.0}  # what the unfixed constructor saved
    path.write_text(json.dumps(saved))
    with caplog.at_level(logging.WARNING):
        model = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert "top level, where earlier hf_ext versions stored but never applied it" in caplog.text
    assert model.config.source_config.rope_parameters["rope_type"] == "default"
    assert "rope_parameters" not in model.config.to_dict()
    torch.testing.assert_close(
        _logits(model), _logits(convert_to_layer_parallel(plain, pairs=_PAIRS)), rtol=0, atol=1e-6
    )
