"""fg42: public FP8 helpers refuse bad arguments early, naming them (torchao_config, te_recipe, ao_recipe_kwargs,
KurtosisMonitor)."""

import pytest
import torch
from torch import nn

from hf_ext.fp8 import KurtosisMonitor, ao_recipe_kwargs, te_recipe, torchao_config
from hf_ext.models.fog import FogConfig, FogForCausalLM


def _tiny():
    cfg = FogConfig.fog(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48
    )
    return FogForCausalLM(cfg)


@pytest.mark.parametrize("name", ["pad_inner_dim", "emulate", "fsdp_float8_all_gather"])
@pytest.mark.parametrize("value", ["False", "no", 0, None])
def test_torchao_config_refuses_non_bool_switches(name, value):
    # "False" is truthy: torchao_config(emulate="False") built an emulating config, ("no") an all-gather one
    with pytest.raises(ValueError, match=f"torchao_config: {name} must be True or False"):
        torchao_config("tensorwise", **{name: value})


def test_torchao_config_unknown_recipe_is_a_value_error():
    # torchao only asserts (AssertionError, gone under python -O)
    with pytest.raises(ValueError, match="torchao_config: recipe='axiswise'.*tensorwise"):
        torchao_config("axiswise")


def test_torchao_config_valid_switches_still_apply():
    cfg = torchao_config("tensorwise", pad_inner_dim=True, emulate=True, fsdp_float8_all_gather=True)
    assert cfg.pad_inner_dim and cfg.emulate and cfg.enable_fsdp_float8_all_gather
    cfg = torchao_config("rowwise")
    assert not cfg.pad_inner_dim and not cfg.emulate and not cfg.enable_fsdp_float8_all_gather


@pytest.mark.parametrize(
    "kwargs, match",
    [
        # any string but "hybrid" gave an all-E4M3 recipe (E4M3 gradients instead of E5M2)
        (dict(fp8_format="HYBRID"), "te_recipe: fp8_format='HYBRID'"),
        (dict(fp8_format="e5m2"), "te_recipe: fp8_format='e5m2'"),
        (dict(amax_history_len=0), "te_recipe: amax_history_len must be a positive int"),
        (dict(amax_history_len=16.0), "te_recipe: amax_history_len must be a positive int"),
        (dict(margin=-1), "te_recipe: margin must be a non-negative int"),
        (dict(amax_compute_algo="mean"), "te_recipe: amax_compute_algo='mean'"),
        (dict(fp8_dpa="False"), "te_recipe: fp8_dpa must be True or False"),
    ],
)
def test_te_recipe_checks_arguments_before_importing_transformer_engine(kwargs, match):
    with pytest.raises(ValueError, match=match):
        te_recipe(**kwargs)


def test_ao_recipe_kwargs_needs_a_module():
    with pytest.raises(TypeError, match="ao_recipe_kwargs: model must be the torch.nn.Module.*NoneType"):
        ao_recipe_kwargs(None)


def test_kurtosis_monitor_checks_model_and_layers():
    model = _tiny()
    with pytest.raises(TypeError, match="KurtosisMonitor: model must be a torch.nn.Module, got NoneType"):
        KurtosisMonitor(None)
    with pytest.raises(TypeError, match="KurtosisMonitor: layers must be a list of the model's blocks"):
        KurtosisMonitor(model, layers=[1, 2])
    with pytest.raises(TypeError, match="KurtosisMonitor: layers must be a list"):
        KurtosisMonitor(model, layers=model.model.layers[0])  # one block, not a list of blocks
    # the accepted forms keep working
    for layers in (list(model.model.layers), tuple(model.model.layers), model.model.layers):
        monitor = KurtosisMonitor(model, sites=["activation"], layers=layers)
        with monitor.active():
            model(torch.randint(0, 64, (2, 8)))
        stats = monitor.collect()
        assert stats["activation/kurtosis/layer_0"] > 0
    assert isinstance(model.model.layers, nn.ModuleList)


@pytest.mark.parametrize("handler", [{"recipe": "tensorwise"}, "torchao", 5, "ddp"])
def test_fp8_trainer_refuses_a_recipe_that_is_not_an_fp8_handler(tmp_path, monkeypatch, handler):
    # accelerate's AssertionError "Unsupported kwargs handler passed" (no argument named; gone under python -O); a
    # DistributedDataParallelKwargs was taken in place of the FP8 recipe (so accelerate's own default recipe ran)
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DistributedDataParallelKwargs
    from transformers import TrainingArguments

    from hf_ext.fp8 import Fp8Trainer

    if handler == "ddp":
        handler = DistributedDataParallelKwargs()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    try:
        args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
        with pytest.raises(TypeError, match="Fp8Trainer: fp8_recipe_kwargs must be an accelerate FP8 recipe handler"):
            Fp8Trainer(model=_tiny(), args=args, fp8_recipe_kwargs=handler)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
