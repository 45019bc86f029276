"""`convert`: which linears are put in FP8 (LM head by identity and by name, wrapped names, skip regexes), size
checks, the options each backend receives, and refusals of conversions that would silently do nothing."""

import pytest
import torch
from torch import nn

from hf_ext.fp8 import Fp8Linear, convert, fp8_converted_modules, fp8_target_filter, fp8_target_modules
from hf_ext.models.fog import FogConfig, FogForCausalLM

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj"}


def _fog(**kw):
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**TINY, **kw))


class _Plain(nn.Module):
    """No `get_output_embeddings`: the head is recognised by its conventional name only."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16))
        self.lm_head = nn.Linear(16, 48)


class _OddHead(nn.Module):
    """The output embedding has an unconventional name: it is recognised through `get_output_embeddings`."""

    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(16, 32), nn.Linear(32, 16))
        self.proj_out = nn.Linear(16, 48)

    def get_output_embeddings(self):
        return self.proj_out


# ----------------------------------------------------------------------------------------------- target selection
def test_the_lm_head_is_found_by_identity_and_by_name():
    assert fp8_target_modules(_Plain()) == ["block.0", "block.1"]
    assert fp8_target_modules(_OddHead()) == ["block.0", "block.1"]
    assert fp8_target_modules(_OddHead(), include_lm_head=True) == ["block.0", "block.1", "proj_out"]


def test_the_filter_recognises_the_head_under_a_wrapper_prefix():
    """accelerate / DDP / peft see the model under a prefix ("module.", "base_model.model."): still the LM head."""
    model = _fog()
    keep = fp8_target_filter(model)
    for fqn in ("lm_head", "module.lm_head", "base_model.model.lm_head"):
        assert keep(model.lm_head, fqn) is False, fqn
    assert keep(model.model.layers[0].mlp.up_proj, "module.model.layers.0.mlp.up_proj") is True


def test_skip_modules_patterns_match_anywhere_in_the_name():
    """`skip_modules=["down_proj"]` (the form convert's own error messages suggest) keeps every down projection."""
    model = convert(_fog(), "emulated", skip_modules=["down_proj"])
    converted = fp8_converted_modules(model)
    assert {n.rsplit(".", 1)[-1] for n in converted} == BLOCK_LINEARS - {"down_proj"}
    assert len(converted) == 2 * 5
    for layer in model.model.layers:
        assert type(layer.mlp.down_proj) is nn.Linear


def test_skip_modules_that_leave_nothing_to_convert_are_refused():
    model = _fog()
    with pytest.raises(ValueError, match="no nn.Linear to convert"):
        convert(model, "emulated", skip_modules=["proj"])
    assert not fp8_converted_modules(model) and not hasattr(model, "hf_ext_fp8")


# ---------------------------------------------------------------------------------------------------- size checks
def test_output_features_not_divisible_by_16_are_refused():
    model = nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 32))
    with pytest.raises(ValueError, match=r"0 \(32->24\)"):
        convert(model, "emulated")
    assert not fp8_converted_modules(model)


def test_transformer_engine_cannot_pad_even_with_pad_inner_dim():
    model = nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 32))
    with pytest.raises(ValueError, match="Transformer Engine cannot pad"):
        convert(model, "te", pad_inner_dim=True)


# ------------------------------------------------------------------------------------------- options per backend
def test_emulated_linears_receive_every_scaling_option():
    model = convert(
        _fog(), "emulated", fp8_format="e4m3", amax_history_len=8, amax_compute_algo="most_recent", margin=2
    )
    linears = [model.get_submodule(n) for n in fp8_converted_modules(model)]
    assert len(linears) == 2 * 6
    for lin in linears:
        assert isinstance(lin, Fp8Linear)
        assert (lin.scaling, lin.fp8_format, lin.amax_compute_algo, lin.margin) == ("delayed", "e4m3", "most_recent", 2)
        assert tuple(lin.fp8_amax_history.shape) == (8, 3)
    assert model.hf_ext_fp8["backend"] == "emulated" and model.hf_ext_fp8["recipe"] == "delayed"
    current = convert(_fog(), "emulated", scaling="current")
    assert current.hf_ext_fp8["recipe"] == "current"


def test_emulated_margin_reaches_the_forward():
    """A converted linear computes with scale fp8_max / amax / 2**margin: equal to an `Fp8Linear` built with it."""
    model = convert(_fog(), "emulated", scaling="current", margin=3)
    lin = model.model.layers[0].mlp.up_proj
    ref = Fp8Linear(32, 48, bias=False, scaling="current", margin=3)
    ref.weight = lin.weight
    x = torch.randn(5, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(lin(x), ref(x), rtol=0, atol=0)
        ref.margin = 0
        assert not torch.equal(lin(x), ref(x))


def test_torchao_receives_emulate_and_pad_inner_dim():
    model = convert(_fog(), "torchao", emulate=True, pad_inner_dim=True)
    linears = [model.get_submodule(n) for n in fp8_converted_modules(model)]
    assert len(linears) == 2 * 6
    for lin in linears:
        assert lin.config.emulate is True and lin.config.pad_inner_dim is True


# -------------------------------------------------------------------------------------------- accelerate's handler
def test_ao_recipe_kwargs_all_gathers_in_fp8_for_tensorwise_only(monkeypatch):
    """docs/fp8.md: under FSDP2 `ao_recipe_kwargs` turns FP8 all-gather of the shards on (torchao supports it for
    tensorwise)."""
    from hf_ext.fp8 import ao_recipe_kwargs

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` sets for an fsdp_version: 2 config
    monkeypatch.setenv("FSDP_VERSION", "2")
    model = _fog()
    handler = ao_recipe_kwargs(model)
    assert handler.config.enable_fsdp_float8_all_gather is True
    assert handler.module_filter_func(model.lm_head, "lm_head") is False
    assert handler.module_filter_func(model.model.layers[0].self_attn.q_proj, "model.layers.0.self_attn.q_proj")
    assert ao_recipe_kwargs(model, recipe="rowwise").config.enable_fsdp_float8_all_gather is False


def test_ao_recipe_kwargs_refuses_sizes_fp8_cannot_run():
    from hf_ext.fp8 import ao_recipe_kwargs

    model = nn.Sequential(nn.Linear(32, 24), nn.Linear(24, 32))
    with pytest.raises(ValueError, match="divisible by 16"):
        ao_recipe_kwargs(model)
    assert ao_recipe_kwargs(model, pad_inner_dim=True).config.pad_inner_dim is True


# ---------------------------------------------------------------------------------------------------- Fp8Trainer
@pytest.mark.parametrize(
    "given, steps, expected",
    [
        (0.21, 10, 2),  # the nearest step count to 2.1
        (0.01, 10, 1),  # a fraction never rounds to no cooldown at all
        (10, 10, 10),  # the whole run may cool down
        (2.0, 10, 2),  # an integral float is a step count, not a fraction
        (3, 10, 3),
    ],
)
def test_wsd_decay_steps_resolve_to_step_counts(given, steps, expected):
    from hf_ext.fp8 import resolve_wsd_kwargs

    out = resolve_wsd_kwargs({"num_decay_steps": given, "decay_type": "1-sqrt"}, steps)
    assert out == {"num_decay_steps": expected, "decay_type": "1-sqrt"}
    assert type(out["num_decay_steps"]) is int


@pytest.mark.parametrize("given", [1.5, True, 11])
def test_wsd_decay_steps_outside_the_run_or_not_a_number_are_refused(given):
    from hf_ext.fp8 import resolve_wsd_kwargs

    with pytest.raises(ValueError, match="num_decay_steps"):
        resolve_wsd_kwargs({"num_decay_steps": given}, 10)


def _wsd_args(tmp_path, warmup, decay):
    from transformers import TrainingArguments

    return TrainingArguments(
        str(tmp_path), max_steps=10, warmup_steps=warmup, learning_rate=1.0, lr_scheduler_type="warmup_stable_decay",
        lr_scheduler_kwargs={"num_decay_steps": decay}, report_to="none", use_cpu=True,
    )  # fmt: skip


def test_wsd_schedule_leaves_the_users_fractional_kwargs_in_place(tmp_path):
    """The fraction is resolved for the scheduler only: `args.lr_scheduler_kwargs` keeps the user's value, and the
    learning rate is flat until the last 5 of 10 steps."""
    from hf_ext.fp8 import Fp8Trainer

    args = _wsd_args(tmp_path, 0, 0.5)
    trainer = Fp8Trainer(model=_fog(), args=args)
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    assert args.lr_scheduler_kwargs == {"num_decay_steps": 0.5}
    lrs = []
    for _ in range(10):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    assert lrs[:6] == [1.0] * 6 and lrs[6] < 1.0


def test_wsd_warmup_plus_cooldown_filling_the_run_exactly_is_not_warned(tmp_path, caplog):
    from hf_ext.fp8 import Fp8Trainer

    for warmup, warned in ((5, False), (6, True)):
        caplog.clear()
        with caplog.at_level("WARNING"):
            Fp8Trainer(model=_fog(), args=_wsd_args(tmp_path, warmup, 5)).create_optimizer_and_scheduler(10)
        assert any("exceed the run" in r.getMessage() for r in caplog.records) == warned


def test_fp8_trainer_with_a_positional_model_gives_accelerate_the_full_block_filter(tmp_path, monkeypatch):
    """Under `--mixed_precision fp8` the Accelerator gets `ao_recipe_kwargs(model)` (every block linear, the LM head
    out) next to Trainer's own DDP handler, also when the model is passed positionally."""
    from accelerate.state import AcceleratorState, GradientState
    from transformers import TrainingArguments

    from hf_ext.fp8 import Fp8Trainer

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    model = _fog()
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[], ddp_bucket_cap_mb=7)
    try:
        trainer = Fp8Trainer(model, args)
        handler = trainer.accelerator.ao_recipe_handler
        first = "model.layers.0.self_attn.q_proj"
        assert handler.module_filter_func(model.get_submodule(first), first) is True
        assert handler.module_filter_func(model.lm_head, "lm_head") is False
        assert trainer.accelerator.ddp_handler is not None and trainer.accelerator.ddp_handler.bucket_cap_mb == 7
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


# -------------------------------------------------------------------------------- delayed scaling, checkpointing
def test_many_forwards_before_one_backward_are_each_recomputed_with_their_own_scales():
    """Eight training forwards of different magnitudes, then one backward, under activation checkpointing: each
    recompute reuses the delayed scales of the forward it repeats, so gradients and histories equal a run without
    checkpointing, with no warning."""
    import copy
    import warnings

    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    base = Fp8Linear(16, 16, bias=False, scaling="delayed", amax_history_len=1)
    base(torch.randn(4, 16)).sum().backward()  # scales now come from a history
    base.weight.grad = None
    xs = [torch.randn(4, 16, generator=torch.Generator().manual_seed(i)) * (1 + 2 * i) for i in range(8)]

    def run(ckpt):
        lin = copy.deepcopy(base).train()
        loss = 0
        for x in xs:
            y = checkpoint(lin, x.requires_grad_(), use_reentrant=False) if ckpt else lin(x)
            loss = loss + y.square().sum()
        loss.backward()
        return lin.weight.grad, lin.fp8_amax_history

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        (g0, h0), (g1, h1) = run(False), run(True)
    torch.testing.assert_close(g1, g0, rtol=0, atol=0)
    torch.testing.assert_close(h1, h0, rtol=0, atol=0)


def test_health_values_reach_every_callback_of_the_logged_row(tmp_path, monkeypatch):
    """An `Fp8HealthCallback`'s pending values join the row in `Fp8Trainer.log`, before any callback (reporting
    integrations, user callbacks listed before it) sees the row."""
    from transformers import TrainerCallback, TrainingArguments

    from hf_ext.fp8 import Fp8HealthCallback, Fp8Trainer

    seen = []

    class Recorder(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    health = Fp8HealthCallback()
    pending = [{"fp8/qkv/kurtosis/avg": 3.5}]
    monkeypatch.setattr(health, "take_pending_logs", lambda: pending.pop() if pending else {})
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to=[])
    trainer = Fp8Trainer(model=_fog(), args=args, callbacks=[Recorder(), health])
    trainer.log({"loss": 1.0})
    assert seen[-1]["fp8/qkv/kurtosis/avg"] == 3.5 and seen[-1]["loss"] == 1.0
    assert trainer.state.log_history[-1]["fp8/qkv/kurtosis/avg"] == 3.5
