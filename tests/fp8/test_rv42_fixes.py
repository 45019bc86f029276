"""Audit rv42: the early argument checks of `torchao_config` / `te_recipe` refused inputs the functions took before.

* `torchao_config(Float8LinearRecipeName.ROWWISE)`, torchao's own recipe name that `Float8LinearConfig.from_recipe_name`
  takes, built the rowwise config; the new recipe check compared it with the name strings and refused it.
* A numpy boolean switch (`pad_inner_dim=np.True_`, `te_recipe(fp8_dpa=np.True_)`) was passed through; the new
  switch check (meant for strings such as "False") refused it.
"""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

pytest.importorskip("torchao")


@pytest.mark.parametrize("name", ["tensorwise", "rowwise", "rowwise_with_gw_hp"])
def test_torchao_config_takes_torchaos_own_recipe_name(name):
    from torchao.float8 import Float8LinearConfig, Float8LinearRecipeName

    from hf_ext.fp8 import torchao_config

    got = torchao_config(Float8LinearRecipeName(name))
    assert got == torchao_config(name) == Float8LinearConfig.from_recipe_name(name)


def test_torchao_config_takes_numpy_booleans_as_the_bools_they_hold():
    from hf_ext.fp8 import torchao_config

    got = torchao_config("tensorwise", pad_inner_dim=np.True_, emulate=np.True_, fsdp_float8_all_gather=np.False_)
    assert got == torchao_config("tensorwise", pad_inner_dim=True, emulate=True)
    assert type(got.pad_inner_dim) is bool and type(got.emulate) is bool
    with pytest.raises(ValueError, match="torchao_config: emulate must be True or False, got 'False'"):
        torchao_config("tensorwise", emulate="False")  # the string the check is for stays refused


def test_te_recipe_takes_a_numpy_boolean_fp8_dpa(monkeypatch):
    from hf_ext.fp8 import te_recipe

    recipe = types.ModuleType("transformer_engine.common.recipe")  # a stand-in: Transformer Engine needs CUDA
    recipe.Format = types.SimpleNamespace(HYBRID="HYBRID", E4M3="E4M3")
    recipe.DelayedScaling = lambda **kw: kw
    for name in ("transformer_engine", "transformer_engine.common"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "transformer_engine.common.recipe", recipe)
    got = te_recipe(fp8_dpa=np.True_)
    assert got["fp8_dpa"] is True and got["fp8_format"] == "HYBRID"
    with pytest.raises(ValueError, match="te_recipe: fp8_dpa must be True or False"):
        te_recipe(fp8_dpa="yes")
