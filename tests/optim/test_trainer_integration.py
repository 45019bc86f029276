"""Normalized optimizers inside transformers' Trainer: every path is right (GPT-2 Conv1D and Llama layouts, tied
embeddings, weight decay, optim / lr_scheduler_type) or a clear error."""

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from hf_ext.optim import (
    LionAR,
    RotationalWrapper,
    WarmupFreeTrainer,
    WarmupFreeTrainingArguments,
    normalized_optimizer,
)


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def _gpt2():
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=32))


def _data(n=8, t=16):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 64, (t,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def _plain_args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=1.0,
        max_steps=2,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    base.update(kw)
    return TrainingArguments(**base)


def _check_layout(model, opt):
    """Conv1D weights rotate by columns, nn.Linear by rows; the tied embedding is not rotational."""
    from transformers.pytorch_utils import Conv1D

    linear = [m.weight for m in model.modules() if isinstance(m, (torch.nn.Linear, Conv1D))]
    emb = model.get_input_embeddings().weight
    checked = 0
    for w in linear:
        if w is emb:
            continue
        st = opt.state[w]
        neurons = w.shape[1] if isinstance_conv1d(model, w) else w.shape[0]
        assert st["norm"].shape == (neurons, 1)
        dim = 0 if isinstance_conv1d(model, w) else 1
        torch.testing.assert_close(w.detach().norm(dim=dim), st["norm"].squeeze(1), atol=1e-5, rtol=0)
        checked += 1
    assert checked >= 2
    assert "norm" not in opt.state[emb]
    return checked


def isinstance_conv1d(model, w):
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) and m.weight is w for m in model.modules())


def test_warmup_free_trainer_with_plain_training_arguments(tmp_path):
    model = _llama()
    trainer = WarmupFreeTrainer(model=model, args=_plain_args(tmp_path), train_dataset=_data())
    trainer.train()  # used to rebuild TrainingArguments internally, reset accelerate's state and crash here
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, LionAR)
    _check_layout(model, opt)
    # plain TrainingArguments: transformers' default schedule (linear decay) is honoured
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    assert lrs == pytest.approx([1e-3, 5e-4])


def test_optim_is_refused_not_ignored(tmp_path):
    with pytest.raises(ValueError, match="--optim sgd"):
        WarmupFreeTrainingArguments(output_dir=str(tmp_path), optim="sgd", use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="--optim sgd"):
        WarmupFreeTrainer(model=_llama(), args=_plain_args(tmp_path, optim="sgd"), train_dataset=_data())


@pytest.mark.parametrize(
    "sched,expected",
    [
        ("warmup_stable_decay", [1e-3] * 4 + [2e-3 / 3, 1e-3 / 3]),  # the trapezoid: linear decay over the last half
        ("constant", [1e-3] * 6),
        ("cosine", None),
    ],
)
def test_lr_scheduler_type_is_honoured(tmp_path, sched, expected):
    args = WarmupFreeTrainingArguments(
        output_dir=str(tmp_path),
        lr_scheduler_type=sched,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=1.0,
        max_steps=6,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
    )
    trainer = WarmupFreeTrainer(model=_llama(), args=args, train_dataset=_data())
    trainer.train()
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    if expected is None:
        import math

        expected = [1e-3 * 0.5 * (1 + math.cos(math.pi * s / 6)) for s in range(6)]
    assert lrs == pytest.approx(expected)


@pytest.mark.parametrize("make_model", [_gpt2, _llama])
def test_lion_ar_through_optimizer_cls_and_kwargs_without_model_is_refused(tmp_path, make_model):
    trainer = Trainer(
        model=make_model(),
        args=_plain_args(tmp_path),
        train_dataset=_data(),
        optimizer_cls_and_kwargs=(LionAR, {"lr": 1e-3, "weight_decay": 1.0}),
    )
    with pytest.raises(ValueError, match="model"):
        trainer.train()


@pytest.mark.parametrize("make_model", [_gpt2, _llama])
@pytest.mark.parametrize("how", ["model_kwarg", "factory"])
def test_lion_ar_in_stock_trainer_gets_the_layout_right(tmp_path, make_model, how):
    model = make_model()
    args = _plain_args(tmp_path, weight_decay=0.0)  # Trainer's own weight decay must not override the optimizer's
    if how == "model_kwarg":
        pair = (LionAR, {"model": model, "lr": 1e-3, "weight_decay": 1.0})
    else:
        pair = normalized_optimizer("lion_ar", args, weight_decay=1.0)
    trainer = Trainer(model=model, args=args, train_dataset=_data(), optimizer_cls_and_kwargs=pair)
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, LionAR)
    _check_layout(model, opt)
    assert all(g["weight_decay"] == 1.0 for g in opt.param_groups if g["rotational"])


def test_group_weight_decay_conflict_is_refused():
    model = _llama()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]
    with pytest.raises(ValueError, match="weight_decay"):
        LionAR(groups, lr=1e-3, weight_decay=1.0, model=model)
    with pytest.raises(ValueError, match="weight_decay"):
        RotationalWrapper(groups, lr=1e-3, weight_decay=1.0, neuron_dim=0)
    with pytest.raises(ValueError, match="model"):  # dict groups without layout information
        RotationalWrapper([{"params": decay, "weight_decay": 1.0}], lr=1e-3, weight_decay=1.0)
    # agreeing groups + the model: the model decides status and layout, the embedding stays plain
    opt = LionAR(
        [{"params": decay, "weight_decay": 1.0}, {"params": rest, "weight_decay": 0.0}],
        lr=1e-3,
        weight_decay=1.0,
        model=model,
    )
    emb = model.model.embed_tokens.weight
    assert not next(g for g in opt.param_groups if any(p is emb for p in g["params"]))["rotational"]


def test_rotational_adamw_factory_on_gpt2(tmp_path):
    model = _gpt2()
    args = _plain_args(tmp_path, weight_decay=0.1)
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=_data(),
        optimizer_cls_and_kwargs=normalized_optimizer("rotational_adamw", args, update_norm_decay=0.0),
    )
    trainer.train()
    opt = trainer.optimizer.optimizer
    assert isinstance(opt, RotationalWrapper) and opt.inner_name == "adamw"
    _check_layout(model, opt)
