"""mu42: tests that kill mutants of pass 36's FP8 argument checks which its own tests let survive: the accepted side
of te_recipe's amax_compute_algo check (a callable) and of Fp8Trainer's handler check (a TERecipeKwargs)."""

import sys
import types

import pytest


@pytest.fixture
def fake_te(monkeypatch):
    """A stand-in for `transformer_engine.common.recipe` (no Transformer Engine on a CPU machine): te_recipe's checks
    run before the import, and what it builds is recorded."""

    class DelayedScaling:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    fmt = types.SimpleNamespace(HYBRID="HYBRID", E4M3="E4M3")
    recipe = types.ModuleType("transformer_engine.common.recipe")
    recipe.DelayedScaling, recipe.Format = DelayedScaling, fmt
    common = types.ModuleType("transformer_engine.common")
    common.recipe = recipe
    te = types.ModuleType("transformer_engine")
    te.common = common
    for name, mod in (("transformer_engine", te), ("transformer_engine.common", common), (recipe.__name__, recipe)):
        monkeypatch.setitem(sys.modules, name, mod)
    return recipe


def test_te_recipe_takes_a_callable_amax_algorithm(fake_te):
    # Transformer Engine's DelayedScaling takes a custom amax algorithm (a callable); the check names only strings
    from hf_ext.fp8 import te_recipe

    def algo(history):
        return history.max(dim=0).values

    built = te_recipe(amax_compute_algo=algo, amax_history_len=16, margin=1, fp8_format="e4m3", fp8_dpa=True)
    assert built.kwargs == dict(margin=1, fp8_format="E4M3", amax_history_len=16, amax_compute_algo=algo, fp8_dpa=True)
    assert te_recipe().kwargs["fp8_format"] == "HYBRID"  # FOG's defaults pass the checks too


def test_fp8_trainer_takes_a_transformer_engine_handler(tmp_path):
    # a TERecipeKwargs is an FP8 handler: not the TypeError for a non-handler, but the next check (no fp8 mixed
    # precision here). TERecipeKwargs() needs Transformer Engine, so the instance skips its __post_init__.
    from accelerate.utils import TERecipeKwargs
    from transformers import TrainingArguments

    from hf_ext.fp8 import Fp8Trainer
    from hf_ext.models.fog import FogConfig, FogForCausalLM

    handler = object.__new__(TERecipeKwargs)
    model = FogForCausalLM(
        FogConfig.fog(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    )
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="fp8_recipe_kwargs is used only under fp8 mixed precision"):
        Fp8Trainer(model=model, args=args, fp8_recipe_kwargs=handler)
