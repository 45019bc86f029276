"""Fp8HealthCallback + auto_find_batch_size (ta17 F5): after an out-of-memory error Trainer reruns its training loop,
within the same train() call, from step 0 (or from the resumed checkpoint) with a smaller batch. The callback kept the
failed attempt's history and baseline values, and the monitor enabled in the failed (monitored) step stayed on, so
the retry recorded an extra step: history steps [2, 1, 2, 4, 6] instead of [2, 4, 6], baselines mixing both
attempts. The retry now records what a run started directly at its batch size does."""

import torch
from datasets import Dataset
from transformers import TrainingArguments, default_data_collator

from hf_ext.fp8 import Fp8HealthCallback, convert
from hf_ext.fp8.trainer import Fp8Trainer
from hf_ext.models.fog import FogConfig, FogForCausalLM


def _model():
    torch.manual_seed(0)
    model = FogForCausalLM(
        FogConfig.fog(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)
    )
    convert(model, "emulated")
    return model


def _data():
    ids = torch.randint(0, 128, (32, 16), generator=torch.Generator().manual_seed(1)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def _run(trainer_cls, out, batch_size, oom_at=None, resume=None, **kw):
    callback = Fp8HealthCallback(every_n_steps=2, baseline_steps=2)
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=batch_size, max_steps=6, learning_rate=3e-3, report_to=[],
        use_cpu=True, seed=0, save_strategy="steps", save_steps=2, logging_steps=2, disable_tqdm=True, **kw,
    )  # fmt: skip
    trainer = trainer_cls(
        model=_model(), args=args, train_dataset=_data(), data_collator=default_data_collator, callbacks=[callback]
    )
    trainer.oom_at = oom_at
    trainer.train(resume_from_checkpoint=resume)
    return trainer, callback


def _record(trainer, callback):
    logged = [{k: v for k, v in r.items() if k.startswith("fp8/") or k == "step"} for r in trainer.state.log_history]
    return callback.history, callback.baseline_obs, callback.alerts, [r for r in logged if len(r) > 1]


def test_retry_after_out_of_memory_records_what_a_direct_run_at_its_batch_size_does(tmp_path, out_of_memory_once):
    retried = _run(out_of_memory_once(Fp8Trainer), tmp_path / "retry", 4, oom_at=3, auto_find_batch_size=True)
    assert retried[0]._train_batch_size == 3  # steps 1-3 done (step 2 monitored), the error in monitored step 4
    direct = _run(Fp8Trainer, tmp_path / "direct", 3)
    assert [h["step"] for h in retried[1].history] == [2, 4, 6]
    assert not retried[1].monitor.enabled
    assert _record(*retried) == _record(*direct)


def test_retry_of_a_resumed_call_starts_from_the_checkpoints_state(tmp_path, out_of_memory_once):
    _run(Fp8Trainer, tmp_path / "full", 3)
    checkpoint = str(tmp_path / "full" / "checkpoint-2")
    # the checkpoint's batch size (3) is tried first: step 3 done, the error in monitored step 4; then batch size 2
    retried = _run(
        out_of_memory_once(Fp8Trainer), tmp_path / "retry", 4, oom_at=3, resume=checkpoint, auto_find_batch_size=True
    )
    assert retried[0]._train_batch_size == 2
    direct = _run(Fp8Trainer, tmp_path / "direct", 2, resume=checkpoint)
    assert [h["step"] for h in retried[1].history] == [2, 4, 6]
    assert _record(*retried) == _record(*direct)
