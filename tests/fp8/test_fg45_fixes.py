"""fg45: public FP8 helpers refuse bad arguments early, naming them (te_fp8_shape_ok, KurtosisMonitor sites,
fp8_target_filter / fp8_target_modules / fp8_branch_targets, load_fp8_state)."""

import pytest

from hf_ext.fp8 import (
    KurtosisMonitor,
    fp8_branch_targets,
    fp8_target_filter,
    fp8_target_modules,
    load_fp8_state,
    te_fp8_shape_ok,
)
from hf_ext.models.fog import FogConfig, FogForCausalLM


def _tiny():
    cfg = FogConfig.fog(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
    )
    return FogForCausalLM(cfg)


@pytest.mark.parametrize("rows", ["8", -8, 8.0, True])
def test_te_fp8_shape_ok_refuses_what_is_not_a_token_count(rows):
    # "8" failed with "not all arguments converted during string formatting" ("8" % 8); -8 and 8.0 passed as FP8-able
    with pytest.raises(ValueError, match="te_fp8_shape_ok: rows must be a token count"):
        te_fp8_shape_ok(rows)


def test_te_fp8_shape_ok_still_takes_counts_and_none():
    assert te_fp8_shape_ok(0) and te_fp8_shape_ok(16) and te_fp8_shape_ok(None) and not te_fp8_shape_ok(12)


@pytest.mark.parametrize("sites", [[["q"]], ["q", 3], 5])
def test_kurtosis_monitor_refuses_sites_that_are_not_names(sites):
    # a nested list failed with "unhashable type: 'list'", a number with "'int' object is not iterable"
    with pytest.raises(ValueError, match="KurtosisMonitor: sites must be a list of site names"):
        KurtosisMonitor(_tiny(), sites=sites)


def test_kurtosis_monitor_still_takes_a_tuple_or_set_of_sites():
    assert sorted(KurtosisMonitor(_tiny(), sites=("q", "k")).requested_sites) == ["k", "q"]
    assert sorted(KurtosisMonitor(_tiny(), sites={"q"}).requested_sites) == ["q"]


@pytest.mark.parametrize("helper", [fp8_target_filter, fp8_target_modules, fp8_branch_targets])
def test_target_helpers_refuse_a_model_that_is_not_a_module(helper):
    # AttributeError: 'NoneType' object has no attribute 'named_modules' (convert and ao_recipe_kwargs check it)
    with pytest.raises(TypeError, match="fp8_target_filter: model must be a torch.nn.Module, got NoneType"):
        helper(None)


def test_load_fp8_state_refuses_a_folder_that_is_not_a_path():
    # os.path.join's "expected str, bytes or os.PathLike object, not NoneType", naming no argument
    with pytest.raises(TypeError, match="load_fp8_state: folder must be a path"):
        load_fp8_state(_tiny(), None)
