"""Numpy integers and bools (e.g. from a sweep's arrays or a results table) are the documented ints and bools for the
pairing arguments: `convert_to_layer_parallel(start=, end=, pairs=, merge=)` and `LayerParallelConfig(lp_start=,
lp_end=, lp_pairs=, lp_merged=)`; the config stores Python types, so `save_pretrained` writes them as JSON. They used
to be refused ("`start` and `end` must be integers", "lp_merged must be True or False, got np.False_")."""

import json

import numpy as np
import pytest
import torch

from hf_ext.models.layer_parallel import LayerParallelConfig, LayerParallelForCausalLM, convert_to_layer_parallel


@pytest.mark.parametrize(
    "kw,pairs",
    [
        (dict(start=np.int64(0), end=np.int64(4)), [[0, 1], [2, 3]]),
        (dict(pairs=[[np.int32(2), np.int32(3)]]), [[2, 3]]),
        (dict(pairs=np.array([[0, 1], [2, 3]])), [[0, 1], [2, 3]]),
        (dict(start=0, end=2, merge=np.False_), [[0, 1]]),
    ],
)
def test_numpy_arguments_convert_and_round_trip(source, ids, tmp_path, kw, pairs):
    python_kw = {k: np.asarray(v).tolist() for k, v in kw.items()}
    lp = convert_to_layer_parallel(source, **kw).eval()
    ref = convert_to_layer_parallel(source, **python_kw).eval()
    assert lp.config.lp_pairs == pairs
    assert type(lp.config.lp_merged) is bool and lp.config.lp_merged == bool(kw.get("merge", True))
    with torch.no_grad():
        assert torch.equal(lp(ids).logits, ref(ids).logits)
    lp.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["lp_pairs"] == pairs and saved["lp_merged"] is bool(kw.get("merge", True))
    back = LayerParallelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager").eval()
    with torch.no_grad():
        assert torch.equal(back(ids).logits, ref(ids).logits)


def test_config_stores_python_types(source):
    config = LayerParallelConfig(
        source_config=source.config, lp_start=np.int64(2), lp_end=np.int64(4), lp_merged=np.True_
    )
    assert (config.lp_start, config.lp_end, config.lp_pairs) == (2, 4, [[2, 3]])
    assert type(config.lp_start) is int and type(config.lp_end) is int and type(config.lp_merged) is bool
    json.loads(config.to_json_string())  # numpy values would not serialise
    config.lp_merged = np.True_  # setting the value it has is allowed
    assert config.lp_merged is True
    assert LayerParallelConfig(source_config=source.config, lp_pairs=[[np.int16(0), np.int16(1)]]).lp_pairs == [[0, 1]]


@pytest.mark.parametrize(
    "kw,err,match",
    [
        (dict(start=np.float64(0), end=4), TypeError, "`start` and `end` must be integers"),
        (dict(start=np.True_, end=2), TypeError, "`start` and `end` must be integers"),
        (dict(pairs=np.array([[0.0, 1.0]])), ValueError, "two layer indices"),
        (dict(start=0, end=2, merge=np.int64(1)), TypeError, "`merge` must be True or False"),
    ],
)
def test_numpy_values_of_the_wrong_kind_are_still_refused(source, kw, err, match):
    with pytest.raises(err, match=match):
        convert_to_layer_parallel(source, **kw)
