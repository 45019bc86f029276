"""WarmupFreeTrainer: optimizer building, trapezoid schedule, checkpoint resume matches an uninterrupted run."""

import os

import pytest
import torch

from hf_ext.optim import LionAR, RotationalWrapper, WarmupFreeTrainer, WarmupFreeTrainingArguments


def _model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def _data(n=24, t=16):
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": (ids := torch.randint(0, 64, (t,), generator=g)), "labels": ids.clone()} for _ in range(n)]


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        weight_decay=1.0,
        max_steps=4,
        use_cpu=True,
        report_to="none",
        save_strategy="steps",
        save_steps=2,
        logging_steps=1,
        warmup_steps=2,
        seed=0,
        data_seed=0,
    )
    base.update(kw)
    return WarmupFreeTrainingArguments(**base)


@pytest.mark.parametrize("opt_name", ["lion_ar"])
def test_resume_matches_uninterrupted(tmp_path, opt_name):
    data = _data()
    full = WarmupFreeTrainer(
        model=_model(), args=_args(tmp_path / "full", normalized_optimizer=opt_name), train_dataset=data
    )
    full.train()
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / "optimizer_state.safetensors").is_file() and (ckpt / "scheduler_state.json").is_file()
    assert not (ckpt / "optimizer.pt").exists()
    resumed = WarmupFreeTrainer(
        model=_model(), args=_args(tmp_path / "res", normalized_optimizer=opt_name), train_dataset=data
    )
    resumed.train(resume_from_checkpoint=str(ckpt))
    for (n, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, msg=n)
    opt = resumed.optimizer.optimizer
    assert isinstance(opt, LionAR if opt_name == "lion_ar" else RotationalWrapper)
    # the schedule state came back too: lr at the end equals the uninterrupted run's
    assert resumed.lr_scheduler.get_last_lr() == full.lr_scheduler.get_last_lr()


def test_trapezoid_schedule_and_rotational_norms_inside_trainer(tmp_path):
    model = _model()
    trainer = WarmupFreeTrainer(
        model=model, args=_args(tmp_path, max_steps=8, warmup_steps=0, save_strategy="no"), train_dataset=_data()
    )
    trainer.train()
    lrs = [r["learning_rate"] for r in trainer.state.log_history if "learning_rate" in r]
    # no warmup; constant for the first half, then linear cooldown (logged lr is the lr used at that step)
    assert lrs[:5] == pytest.approx([1e-3] * 5)
    assert lrs[5:] == pytest.approx([7.5e-4, 5e-4, 2.5e-4])
    opt = trainer.optimizer.optimizer
    w = model.model.layers[0].mlp.up_proj.weight
    torch.testing.assert_close(w.detach().norm(dim=1), opt.state[w]["norm"].squeeze(1), atol=1e-6, rtol=0)
    emb = model.model.embed_tokens.weight
    # the tied embedding / LM head is not rotational by default (a fixed row norm would cap the logit scale)
    assert emb is model.lm_head.weight and "norm" not in opt.state[emb] and "exp_avg" in opt.state[emb]


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="normalized_optimizer"):
        _args(tmp_path, normalized_optimizer="adam")
    with pytest.raises(ValueError, match="lion_beta1"):
        _args(tmp_path, lion_beta1=1.0)
    assert not os.path.exists(tmp_path / "checkpoint-2")
