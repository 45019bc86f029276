"""Values that used to be accepted and turned the weights into NaN a few steps later are refused at construction,
naming the argument."""

import pytest
import torch

from hf_ext.neuralgrok import (
    GradFilterOptimizer,
    GradNormOptimizer,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokOptimizer,
    amplifier_outer_step,
)

NAN, INF = float("nan"), float("inf")


def _inner():
    torch.manual_seed(0)
    return torch.optim.SGD(torch.nn.Linear(4, 3).parameters(), lr=0.1)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(c=INF), "c="),
        (dict(eps=0.0), "eps="),
        (dict(eps=-1.0), "eps="),
        (dict(eps=NAN), "eps="),
        (dict(eps=INF), "eps="),
        (dict(chunk_size=NAN), "chunk_size="),
        (dict(chunk_size=INF), "chunk_size="),
        (dict(dropout="0.1"), "dropout="),
    ],
)
def test_amplifier_refuses_values_that_give_nan(kw, match):
    with pytest.raises(ValueError, match=match):
        NeuralAmplifier(**kw)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: NeuralGrokOptimizer(_inner(), NeuralAmplifier(), clip_norm=NAN), "clip_norm="),
        (lambda: NeuralGrokOptimizer(_inner(), NeuralAmplifier(), clip_norm="1"), "clip_norm="),
        (lambda: GradNormOptimizer(_inner(), c=INF), "c="),
        (lambda: GradNormOptimizer(_inner(), clip_norm=NAN), "clip_norm="),
        (lambda: GradNormOptimizer(_inner(), eps=0.0), "eps="),
        (lambda: GradNormOptimizer(_inner(), eps=NAN), "eps="),
        (lambda: GradFilterOptimizer(_inner(), lamb=NAN), "lamb="),
        (lambda: GradFilterOptimizer(_inner(), lamb=INF), "lamb="),
        (lambda: GradFilterOptimizer(_inner(), lamb=-INF), "lamb="),
    ],
)
def test_wrappers_refuse_values_that_give_nan(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_gradnorm_eps_zero_used_to_give_nan_on_an_all_zero_gradient():
    """What the refusal prevents: eps=0 turns an all-zero gradient tensor into 0/0 (here with a valid eps)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 3)
    opt = GradNormOptimizer(torch.optim.SGD(layer.parameters(), lr=0.1))
    layer(torch.randn(2, 4)).sum().backward()
    layer.bias.grad.zero_()
    opt.step()
    assert all(torch.isfinite(p).all() for p in layer.parameters())


def test_valid_edge_values_stay_valid():
    NeuralGrokOptimizer(_inner(), NeuralAmplifier(eps=1e-12, chunk_size=1e6), clip_norm=INF)  # inf: no clipping
    NeuralGrokOptimizer(_inner(), NeuralAmplifier(), clip_norm=None)
    GradNormOptimizer(_inner(), clip_norm=0)
    GradFilterOptimizer(_inner(), lamb=-1.0)


def test_outer_step_refuses_an_infinite_virtual_lr():
    amplifier = NeuralAmplifier()
    with pytest.raises(ValueError, match="virtual_lr="):
        amplifier_outer_step(
            amplifier, torch.optim.Adam(amplifier.parameters()), torch.nn.Linear(2, 2),
            inner_batches=[{"x": torch.zeros(1, 2)}], outer_batches=[{"x": torch.zeros(1, 2)}], virtual_lr=INF,
        )  # fmt: skip


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(amplifier_c=INF), "amplifier_c="),
        (dict(amplifier_clip_norm=NAN), "amplifier_clip_norm="),
        (dict(meta_learning_rate=INF), "meta_learning_rate="),
        (dict(meta_weight_decay=-1.0), "meta_weight_decay="),
        (dict(meta_weight_decay=NAN), "meta_weight_decay="),
        (dict(meta_weight_decay=INF), "meta_weight_decay="),
        (dict(virtual_lr=INF), "virtual_lr="),
    ],
)
def test_config_refuses_values_that_give_nan(tmp_path, kw, match):
    """Each used to be accepted; the trainer then logged NaN losses (or torch's Adam named `weight_decay`, which is
    the base optimizer's option, not the amplifier's)."""
    with pytest.raises(ValueError, match=match):
        NeuralGrokConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


def _config(tmp_path, **kw):
    return NeuralGrokConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(learning_rate=NAN), "--learning_rate"),
        (dict(learning_rate=-1e-3), "--learning_rate"),
        (dict(learning_rate=INF), "--learning_rate"),
        (dict(learning_rate=NAN, gradient_transform="grokfast_ema"), "--learning_rate"),
        (dict(learning_rate=NAN, coupled_weight_decay=False), "--learning_rate"),
        (dict(learning_rate=0.0), "--learning_rate 0.*virtual_lr"),  # neuralgrok: virtual_lr would default to 0
        (dict(weight_decay=-1.0), "--weight_decay"),
        (dict(weight_decay=NAN), "--weight_decay"),
        (dict(adam_epsilon=-1.0), "--adam_epsilon"),
        (dict(adam_epsilon=NAN), "--adam_epsilon"),
        (dict(adam_beta1=-0.5), "--adam_beta1"),
        (dict(adam_beta1=NAN), "--adam_beta1"),
        (dict(adam_beta1=1.0), "--adam_beta1"),
        (dict(adam_beta2=1.5), "--adam_beta2"),
        (dict(adam_beta2=1.5, coupled_weight_decay=False), "--adam_beta2"),
        (dict(grokfast_window=2.5, gradient_transform="grokfast_ma"), "grokfast_window="),
        (dict(grokfast_window=True, gradient_transform="grokfast_ma"), "grokfast_window="),
        (dict(outer_batch_size=2.5), "outer_batch_size="),  # used to crash with a TypeError at the first outer step
        (dict(outer_batch_size=True), "outer_batch_size="),
        (dict(outer_batch_size=0), "outer_batch_size="),
        (dict(outer_max_samples=2.5), "outer_max_samples="),
    ],
)
def test_config_refuses_bad_base_optimizer_and_outer_values_when_created(tmp_path, kw, match):
    """Each used to be accepted by the config and refused only by torch's Adam when the trainer or train() built it
    (or, for outer_batch_size=2.5, after the first real steps), or not at all."""
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **kw)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(optim="sgd"), "--optim sgd would be ignored.*coupled_weight_decay=False"),
        (dict(optim="adafactor", gradient_transform="none"), "--optim adafactor would be ignored"),
        (dict(optim_args="foo=1"), "--optim_args 'foo=1' would be ignored.*coupled_weight_decay=False"),
        (dict(optim_target_modules=["q_proj"]), "--optim_target_modules .* would be ignored"),
    ],
)
def test_config_refuses_optim_flags_that_coupled_weight_decay_ignores(tmp_path, kw, match):
    """With coupled_weight_decay=True (the default) the trainer always builds torch.optim.Adam: --optim and its options
    used to be accepted and silently ignored."""
    with pytest.raises(ValueError, match=match):
        _config(tmp_path, **kw)


def test_optim_flags_stay_valid_where_they_are_used(tmp_path):
    from transformers import TrainingArguments

    default = TrainingArguments.__dataclass_fields__["optim"].default
    assert _config(tmp_path, optim=default).coupled_weight_decay  # the default value, given explicitly
    args = _config(tmp_path, optim="sgd", optim_args="momentum=0.9", coupled_weight_decay=False)
    assert getattr(args.optim, "value", args.optim) == "sgd"


def test_config_edge_values_stay_valid(tmp_path):
    _config(tmp_path, weight_decay=0.0, adam_epsilon=0.0, adam_beta1=0.0, adam_beta2=0.0, grokfast_window=1)
    _config(tmp_path, learning_rate=0.0, gradient_transform="grokfast_ema")  # no virtual step: lr 0 is allowed
    _config(tmp_path, learning_rate=0.0, virtual_lr=1e-3)
    _config(tmp_path, learning_rate=1, outer_batch_size=1, outer_max_samples=1)


def test_grad_filter_refuses_a_bool_window():
    with pytest.raises(ValueError, match="window="):
        GradFilterOptimizer(_inner(), mode="ma", window=True)
