"""CubicNewtonTrainer: closure-based steps, logging, refusals, checkpoint resume."""

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewton, CubicNewtonTrainer, CubicNewtonTrainingArguments


class TinyLM(nn.Module):
    def __init__(self, vocab=16, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def _data(n=16):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 16, (8,), generator=g)
        out.append({"input_ids": ids, "labels": (ids * 3 + 1) % 16})
    return out


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=4,
        max_steps=4,
        use_cpu=True,
        report_to="none",
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        seed=0,
        cubic_M=5.0,
        cubic_krylov_dim=4,
        cubic_momentum="ema",
        cubic_alpha=0.5,
        disable_tqdm=True,
    )
    base.update(kw)
    return CubicNewtonTrainingArguments(**base)


def _model():
    torch.manual_seed(0)
    return TinyLM()


def test_trains_logs_and_resumes_exactly(tmp_path):
    data = _data()
    full = CubicNewtonTrainer(model=_model(), args=_args(tmp_path / "full"), train_dataset=data)
    full.train()
    logs = [r for r in full.state.log_history if "cubic/step_norm" in r]
    assert len(logs) == 4
    assert all(r["cubic/model_decrease"] >= 0 and r["cubic/step_norm"] > 0 for r in logs)
    assert logs[-1]["cubic/oracle_calls"] > logs[0]["cubic/oracle_calls"]
    losses = [r["loss"] for r in full.state.log_history if "loss" in r]
    assert losses[-1] < losses[0]
    ckpt = tmp_path / "full" / "checkpoint-2"
    assert (ckpt / "optimizer_state.safetensors").is_file() and not (ckpt / "optimizer.pt").exists()
    resumed = CubicNewtonTrainer(model=_model(), args=_args(tmp_path / "res"), train_dataset=data)
    resumed.train(resume_from_checkpoint=str(ckpt))
    for (n, a), b in zip(full.model.named_parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, msg=n)
    assert isinstance(resumed.optimizer.optimizer, CubicNewton)
    assert resumed._cubic_optimizer()._st["step"] == 4


def test_hf_llama_sdpa_trains_as_eager_and_flex_is_refused(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2)
    flex = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa")
    flex.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="eager or sdpa"):
        CubicNewtonTrainer(model=flex, args=_args(tmp_path))
    data = [{"input_ids": d["input_ids"], "labels": d["input_ids"]} for d in _data(8)]
    trained = {}
    for impl in ("eager", "sdpa"):
        torch.manual_seed(0)
        # float64: eager and sdpa sum in different orders; in float32 that rounding, through two cubic steps,
        # reached 1.9e-6 on one machine; in float64 it is far below the tolerance
        model = LlamaForCausalLM._from_config(cfg, attn_implementation=impl, dtype=torch.float64)
        before = [p.detach().clone() for p in model.parameters()]
        CubicNewtonTrainer(
            model=model, args=_args(tmp_path / impl, max_steps=2, save_strategy="no"), train_dataset=data
        ).train()
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        trained[impl] = [p.detach() for p in model.parameters()]
    for a, b in zip(trained["eager"], trained["sdpa"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(gradient_accumulation_steps=2), "gradient_accumulation_steps"),
        (dict(max_grad_norm=1.0), "max_grad_norm"),
        (dict(cubic_momentum="nesterov"), "cubic_momentum"),
        (dict(cubic_solver="cg"), "cubic_solver"),
        (dict(cubic_M=0.0), "cubic_M"),
        (dict(cubic_M_rule="armijo"), "cubic_M_rule"),
        (dict(cubic_M_rule="adaptive"), "cubic_M_rule.*cubic_momentum"),  # _args uses cubic_momentum="ema"
        (dict(cubic_M_rule="adaptive", cubic_momentum="extrapolated"), "cubic_M_rule.*cubic_momentum"),
        # used to be accepted: NaN acted as power 0, a bool as the window 1
        (dict(cubic_alpha_power=float("nan")), "alpha_power.*--cubic_x"),
        (dict(cubic_beta_power=float("inf")), "beta_power.*--cubic_x"),
        (dict(cubic_hessian_window=True), "hessian_window.*--cubic_x"),
        (dict(cubic_max_step_norm=float("inf")), "max_step_norm.*--cubic_x"),
    ],
)
def test_bad_arguments(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _args(tmp_path, **kw)
    assert not any(tmp_path.iterdir())


def test_adaptive_M_rule_without_momentum_is_accepted(tmp_path):
    assert _args(tmp_path, cubic_M_rule="adaptive", cubic_momentum="none").cubic_M_rule == "adaptive"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_is_refused_before_anything_is_written(tmp_path, dtype):
    model = _model().to(dtype)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=rf"{dtype}.*model\.float\(\)"):
        CubicNewtonTrainer(model=model, args=_args(tmp_path / "out"), train_dataset=_data(4))
    assert not (tmp_path / "out").exists()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    model.head.to(torch.float32)  # mixed: still refused, naming the low-precision dtype
    with pytest.raises(ValueError, match=str(dtype)):
        CubicNewtonTrainer(model=model, args=_args(tmp_path / "out"), train_dataset=_data(4))


def test_losses_the_cubic_step_would_bypass_are_refused_and_no_fake_grad_norm_is_logged(tmp_path):
    """label_smoothing_factor and compute_loss_func changed evaluate() but not the cubic steps (weights identical);
    Trainer's `grad_norm` (of `.grad`, never filled by the closure-based step) was logged as 0.0 at every step."""
    with pytest.raises(ValueError, match="label_smoothing_factor"):
        _args(tmp_path, label_smoothing_factor=0.1)
    with pytest.raises(ValueError, match="compute_loss_func"):
        CubicNewtonTrainer(model=_model(), args=_args(tmp_path), train_dataset=_data(),
                           compute_loss_func=lambda outputs, labels, num_items_in_batch=None: outputs["loss"])  # fmt: skip
    trainer = CubicNewtonTrainer(model=_model(), args=_args(tmp_path, save_strategy="no"), train_dataset=_data())
    trainer.train()
    rows = [r for r in trainer.state.log_history if "loss" in r]
    assert len(rows) == 4 and not any("grad_norm" in r for r in rows)


def test_neftune_noise_alpha_is_refused_by_name(tmp_path):
    """NEFTune adds its embedding noise only in training mode and the cubic step runs the model in eval mode: with
    neftune_noise_alpha=1e4 the trained weights were bit-identical to a run without it, silently (ta17 F6)."""
    with pytest.raises(ValueError, match="neftune_noise_alpha 5.0 would be ignored"):
        _args(tmp_path, neftune_noise_alpha=5.0)
    args = _args(tmp_path, save_strategy="no")
    args.neftune_noise_alpha = 5.0  # set after the arguments were checked
    with pytest.raises(ValueError, match="neftune_noise_alpha=5.0 would be ignored"):
        CubicNewtonTrainer(model=_model(), args=args, train_dataset=_data())


def _cubic_record(trainer):
    """The logged rows (without timings) and `cubic_history` of a run."""
    from dataclasses import asdict

    rows = [
        {k: v for k, v in r.items() if "runtime" not in k and "per_second" not in k} for r in trainer.state.log_history
    ]
    return rows, [asdict(s) for s in trainer.cubic_history]


def test_auto_find_batch_size_retry_records_what_a_direct_run_at_its_batch_size_does(tmp_path, out_of_memory_once):
    """After an out-of-memory error Trainer reruns the loop at step 0 with a smaller batch: the failed attempt's steps
    stayed in `cubic_history` (7 entries for a 4-step run) and in the window of the first cubic/* log (ta17 F8)."""
    data = _data(32)
    kw = dict(max_steps=4, logging_steps=2, save_strategy="no")
    retried = out_of_memory_once(CubicNewtonTrainer)(
        model=_model(), args=_args(tmp_path / "retry", auto_find_batch_size=True, **kw), train_dataset=data
    )
    retried.oom_at = 3  # steps 1-3 done (logged at 2), the error in step 4
    retried.train()
    assert retried._train_batch_size == 3
    direct = CubicNewtonTrainer(
        model=_model(), args=_args(tmp_path / "direct", per_device_train_batch_size=3, **kw), train_dataset=data
    )
    direct.train()
    assert len(retried.cubic_history) == 4
    assert _cubic_record(retried) == _cubic_record(direct)
    # a second call on the same trainer keeps the first call's history and adds its own steps
    retried.oom_at = 1
    retried.train()
    assert len(retried.cubic_history) == 8 and retried._train_batch_size == 2


def test_auto_find_batch_size_retry_of_a_resume_starts_from_the_checkpoint(tmp_path, out_of_memory_once):
    """A retry of a resumed call reruns from the checkpoint: its window of cubic/* stats (the checkpoint's step 3,
    between the logs of steps 2 and 4) and no step of the failed attempt in `cubic_history`."""
    data = _data(32)
    kw = dict(max_steps=6, logging_steps=2, save_steps=3)
    CubicNewtonTrainer(
        model=_model(), args=_args(tmp_path / "full", per_device_train_batch_size=3, **kw), train_dataset=data
    ).train()
    ckpt = str(tmp_path / "full" / "checkpoint-3")
    retried = out_of_memory_once(CubicNewtonTrainer)(
        model=_model(), args=_args(tmp_path / "retry", auto_find_batch_size=True, **kw), train_dataset=data
    )
    retried.oom_at = 4  # the checkpoint's batch size (3) is tried first; step 4 done, the error in step 5
    retried.train(resume_from_checkpoint=ckpt)
    assert retried._train_batch_size == 2
    direct = CubicNewtonTrainer(
        model=_model(), args=_args(tmp_path / "direct", per_device_train_batch_size=2, **kw), train_dataset=data
    )
    direct.train(resume_from_checkpoint=ckpt)
    assert len(retried.cubic_history) == 3
    assert _cubic_record(retried) == _cubic_record(direct)


def test_first_log_after_a_resume_equals_the_uninterrupted_runs(tmp_path, interrupt_after_step):
    """The cubic/* values are means over the steps since the last log. That window was not reset by a new train()
    call (an interrupted call's steps leaked into the first log of a resume on the same trainer) nor saved with a
    checkpoint (a checkpoint between two logs lost its steps): the first log after a resume differed."""
    def cubic_logs(trainer):
        return [{k: v for k, v in r.items() if k.startswith("cubic/") or k == "step"} for r in trainer.state.log_history
                if "cubic/step_norm" in r]  # fmt: skip

    data = _data()
    kw = dict(max_steps=6, logging_steps=2, save_steps=3)  # checkpoint-3 lies between the logs of steps 2 and 4
    full = CubicNewtonTrainer(model=_model(), args=_args(tmp_path / "full", **kw), train_dataset=data)
    full.train()
    expected = cubic_logs(full)
    assert [r["step"] for r in expected] == [2, 4, 6]
    same = CubicNewtonTrainer(model=_model(), args=_args(tmp_path / "same", **kw), train_dataset=data)
    same.add_callback(interrupt_after_step(5))  # after the log of step 4: step 5 is waiting for the log of step 6
    with pytest.raises(KeyboardInterrupt):
        same.train()
    same.train(resume_from_checkpoint=True)  # checkpoint-3
    fresh = CubicNewtonTrainer(model=_model(), args=_args(tmp_path / "fresh", **kw), train_dataset=data)
    fresh.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-3"))
    assert cubic_logs(same) == expected
    assert cubic_logs(fresh) == expected
