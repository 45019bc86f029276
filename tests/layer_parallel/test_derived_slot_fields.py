"""`num_hidden_layers` / `layer_types` of a `LayerParallelConfig` are derived from the source config and the pairing
(audit lc13 #1): another value given to the constructor, as a `from_pretrained` / `AutoConfig` keyword or set on a
built config is refused by name (each was accepted, leaving a config that disagreed with its model), while round trips
and transformers' own config handling keep working. A non-dict `lp_weight_layout` is refused by name (lc13 #2)."""

import copy
import json
import pickle
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

import hf_ext  # noqa: F401  (registers the layer-parallel architecture)
from hf_ext.models.layer_parallel import LayerParallelConfig, convert_to_layer_parallel

FULL, SLIDING = "full_attention", "sliding_attention"


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


def _ids():
    return torch.randint(0, 64, (1, 5), generator=torch.Generator().manual_seed(1))


def test_constructor_refuses_other_slot_fields_and_keeps_the_derived_ones():
    src = _source_config()
    config = LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], num_hidden_layers=4)
    assert config.num_hidden_layers == 4 and config.layer_types == [FULL] * 4
    same = LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], layer_types=(FULL,) * 4)
    assert same.layer_types == [FULL] * 4
    # the unmerged form has one slot per source layer: 6 is its derived value
    assert LayerParallelConfig(source_config=src, lp_pairs=[[2, 3]], lp_merged=False, num_hidden_layers=6)
    with pytest.raises(
        ValueError, match=r"num_hidden_layers of a LayerParallelConfig is derived.*num_hidden_layers=6"
    ):
        LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], num_hidden_layers=6)  # the source depth
    with pytest.raises(ValueError, match=r"source_config=\{'num_hidden_layers': \.\.\.\}.*lp_pairs=\[\[i, i \+ 1\]"):
        LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], num_hidden_layers=2)
    with pytest.raises(ValueError, match="layer_types of a LayerParallelConfig is derived"):
        LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], layer_types=[SLIDING] * 4)
    with pytest.raises(ValueError, match="layer_types of a LayerParallelConfig is derived"):
        LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]], layer_types=[FULL] * 3)


@pytest.mark.parametrize(
    "keyword",
    [{"num_hidden_layers": 2}, {"num_hidden_layers": 6}, {"layer_types": [SLIDING] * 4}, {"layer_types": [FULL] * 2}],
)
def test_from_pretrained_and_autoconfig_refuse_another_slot_keyword(saved, keyword):
    _, path = saved
    (key,) = keyword
    # was: accepted; config.num_hidden_layers said 2 while the model had 4 blocks / cache slots, and layer_types
    # [sliding] * 4 loaded, then the forward failed with an unrelated TypeError
    with pytest.raises(ValueError, match=f"{key} of a LayerParallelConfig is derived"):
        AutoModelForCausalLM.from_pretrained(path, **keyword)
    with pytest.raises(ValueError, match=f"{key} of a LayerParallelConfig is derived"):
        AutoConfig.from_pretrained(path, **keyword)


def test_from_pretrained_takes_the_derived_values_as_keywords(saved):
    lp, path = saved
    model = AutoModelForCausalLM.from_pretrained(path, num_hidden_layers=4, layer_types=[FULL] * 4)
    assert model.config.num_hidden_layers == len(model.model.layers) == 4
    torch.testing.assert_close(model(_ids()).logits, lp(_ids()).logits, rtol=0, atol=1e-6)


def test_a_built_config_refuses_another_slot_value(saved):
    lp, _ = saved
    config = copy.deepcopy(lp.config)
    with pytest.raises(ValueError, match="num_hidden_layers of a LayerParallelConfig is derived"):
        config.num_hidden_layers = 9  # was: accepted (the model keeps 4 slots)
    with pytest.raises(ValueError, match="layer_types of a LayerParallelConfig is derived"):
        config.layer_types = [SLIDING] * 4
    with pytest.raises(ValueError, match="layer_types of a LayerParallelConfig is derived"):
        config.layer_types = None
    assert config.num_hidden_layers == 4 and config.layer_types == [FULL] * 4
    config.num_hidden_layers = 4  # the same value is no change (`config.update(config.to_dict())`)
    config.layer_types = [FULL] * 4
    config.update(config.to_dict())
    # transformers' per-slot view (shallow copies with other head counts) is untouched by the guard
    assert [c.num_key_value_heads for c in config.per_layer_config] == config.kv_heads_per_slot()


def test_a_hand_edited_config_json_with_another_slot_count_is_refused(saved, tmp_path):
    _, path = saved
    data = json.loads(Path(path, "config.json").read_text())
    data["num_hidden_layers"] = 2
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="num_hidden_layers of a LayerParallelConfig is derived"):
        AutoConfig.from_pretrained(tmp_path)


def test_round_trips_and_copies_keep_working(saved, tmp_path):
    lp, path = saved
    config = lp.config
    for other in (
        LayerParallelConfig.from_dict(config.to_dict()),
        LayerParallelConfig(**config.to_diff_dict()),
        LayerParallelConfig.from_dict(json.loads(config.to_json_string())),
        copy.copy(config),
        copy.deepcopy(config),
        pickle.loads(pickle.dumps(config)),
        AutoConfig.from_pretrained(path),
    ):
        assert {**other.to_dict(), "_name_or_path": ""} == config.to_dict()
        assert other.num_hidden_layers == 4 and other.layer_types == [FULL] * 4
    reloaded = AutoModelForCausalLM.from_pretrained(path)
    torch.testing.assert_close(reloaded(_ids()).logits, lp(_ids()).logits, rtol=0, atol=1e-6)
    reloaded.save_pretrained(tmp_path / "again")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "again")
    torch.testing.assert_close(again(_ids()).logits, lp(_ids()).logits, rtol=0, atol=1e-6)


def test_a_structural_keyword_recomputes_the_slots_instead_of_checking_the_saved_ones(tmp_path):
    """A keyword that changes the pairing of a config (not of saved weights) derives new slots: the saved values
    describe the saved structure and are not held against it."""
    src = _source_config()
    config = LayerParallelConfig(source_config=src, lp_pairs=[[2, 3], [4, 5]])
    data = {k: v for k, v in config.to_dict().items() if k != "lp_weight_layout"}
    unmerged = LayerParallelConfig.from_dict(data, lp_merged=False)
    assert unmerged.num_hidden_layers == 6 and unmerged.kv_heads_per_slot() == [2] * 6
    deeper = LayerParallelConfig.from_dict(data, source_config={"num_hidden_layers": 8}, lp_pairs=[[6, 7]])
    assert deeper.num_hidden_layers == 7 and deeper.lp_pairs == [[6, 7]]
    # a keyword equal to the new derived value is accepted, another one refused
    assert LayerParallelConfig.from_dict(data, lp_pairs=[[0, 1]], num_hidden_layers=5).num_hidden_layers == 5
    with pytest.raises(ValueError, match="num_hidden_layers of a LayerParallelConfig is derived"):
        LayerParallelConfig.from_dict(data, lp_pairs=[[0, 1]], num_hidden_layers=4)


def test_a_saved_config_repeats_the_slots_a_reload_derives():
    """A mirrored `sliding_window` set on a built config goes to the source config, which a reload reads: the saved
    `layer_types` are those a reload derives. A Llama source has no sliding-window attention (lp17 #1: setting it
    changed the saved layer types but not the in-memory model's), so its slots stay full attention; a change of the
    attention types is refused (see `test_lp17_fixes.py`)."""
    config = LayerParallelConfig(source_config=_source_config(), lp_pairs=[[2, 3]])
    config.sliding_window = 3
    reloaded = LayerParallelConfig.from_dict(config.to_dict())
    assert reloaded.layer_types == [FULL] * 5 and reloaded.sliding_window == 3


def test_early_exit_is_refused_by_name(saved):
    lp, _ = saved
    with pytest.raises(ValueError, match="assistant_early_exit"):  # it set config.num_hidden_layers
        lp.generate(_ids(), max_new_tokens=2, do_sample=False, assistant_early_exit=1)
    out = lp.generate(_ids(), max_new_tokens=2, do_sample=False)  # plain generation is untouched
    assert out.shape == (1, 7)


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
