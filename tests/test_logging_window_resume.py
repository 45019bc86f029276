"""A run resumed from a checkpoint saved between two logs logs the uninterrupted run's training losses.

transformers' `Trainer` logs `loss` as the mean over the steps since the previous log and restarts that window at a
resume (`_tr_loss = 0`, `_globalstep_last_logged = global_step`): with `--save_steps 3 --logging_steps 2` the first loss
logged after resuming at checkpoint-3 was step 4's alone, where the uninterrupted run logs the mean of steps 3-4 (audit
cn14 #3; the neuralgrok recipe's curves, spikes and whole-run loss are built from these logs). hf_ext's Trainers save
each process's open window with a checkpoint (`LossWindowResumeMixin`) and restore it. On 2 ranks:
test_two_ranks_resume_between_two_logs_logs_the_uninterrupted_losses in tests/test_two_rank_checks.py (one launch
shared with other 2-rank checks).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from hf_ext.recipes._common import whole_run_train_loss
from hf_ext.utils.resume import (
    LOSS_WINDOW_NAME,
    LossWindowResumeMixin,
    read_loss_window,
    restored_loss_window,
    with_loss_window,
    write_loss_window,
)

# logs at 2, 4, 6; step 7 is after the last log; checkpoint-3 lies between the logs of steps 2 and 4 (window: step 3),
# checkpoint-6 right at a log (empty window)
STEPS = dict(max_steps=7, logging_steps=2, save_strategy="steps", save_steps=3)


class TinyLM(nn.Module):
    def __init__(self, vocab=16, dim=6):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
        return {"loss": loss, "logits": logits}


def _tiny_data(n=32):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 16, (8,), generator=g)
        out.append({"input_ids": ids, "labels": (ids * 3 + 1) % 16})
    return out


def _tiny_model():
    torch.manual_seed(0)
    return TinyLM()


COMMON = dict(use_cpu=True, report_to="none", disable_tqdm=True, seed=0, data_seed=0, per_device_train_batch_size=4)


def _plain(out):
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir=str(out), learning_rate=0.05, **COMMON, **STEPS)
    return with_loss_window(Trainer)(model=_tiny_model(), args=args, train_dataset=_tiny_data())


def _warmup_free(out):
    from hf_ext.optim import WarmupFreeTrainer, WarmupFreeTrainingArguments

    args = WarmupFreeTrainingArguments(
        output_dir=str(out), learning_rate=1e-2, weight_decay=1.0, warmup_steps=2, **COMMON, **STEPS
    )
    return WarmupFreeTrainer(model=_tiny_model(), args=args, train_dataset=_tiny_data())


def _cubic(out):
    from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments

    args = CubicNewtonTrainingArguments(
        output_dir=str(out), cubic_M=5.0, cubic_krylov_dim=4, cubic_momentum="ema", cubic_alpha=0.5, **COMMON, **STEPS
    )
    return CubicNewtonTrainer(model=_tiny_model(), args=args, train_dataset=_tiny_data())


@pytest.fixture(scope="module")
def splits():
    from hf_ext.neuralgrok import build_arithmetic_dataset, split_arithmetic_dataset

    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)


def _neuralgrok(out, splits):
    from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM, NeuralGrokConfig, NeuralGrokTrainer

    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=16, num_attention_heads=2))
    common = {k: v for k, v in COMMON.items() if k != "per_device_train_batch_size"}
    args = NeuralGrokConfig(
        output_dir=str(out), gradient_transform="neuralgrok", amplifier_hidden_dims=[4, 4], outer_every=2,
        per_device_train_batch_size=8, **common, **STEPS,
    )  # fmt: skip
    return NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"])


@pytest.fixture(params=["plain", "warmup_free", "cubic", "neuralgrok"])
def make(request, splits):
    if request.param == "neuralgrok":
        return lambda out: _neuralgrok(out, splits)
    return {"plain": _plain, "warmup_free": _warmup_free, "cubic": _cubic}[request.param]


def _losses(trainer):
    return [(row["step"], row["loss"]) for row in trainer.state.log_history if "loss" in row]


def _whole_run(trainer, output):
    return whole_run_train_loss(trainer, output.training_loss if output is not None else 0.0)


def test_resume_between_two_logs_logs_the_uninterrupted_losses(tmp_path, make):
    full = make(tmp_path / "full")
    full_out = full.train()
    expected = _losses(full)
    assert [step for step, _ in expected] == [2, 4, 6]
    expected_train_loss = _whole_run(full, full_out)
    for checkpoint in ("checkpoint-3", "checkpoint-6"):
        resumed = make(tmp_path / f"from-{checkpoint}")
        out = resumed.train(resume_from_checkpoint=str(tmp_path / "full" / checkpoint))
        # the first log after checkpoint-3 is the mean of steps 3-4, as in the uninterrupted run
        assert _losses(resumed) == expected, checkpoint
        # the whole-run train loss counts every step once (the restored step-3 loss is not in train()'s own mean)
        assert _whole_run(resumed, out) == pytest.approx(expected_train_loss, rel=1e-6, abs=0), checkpoint
        assert (tmp_path / "full" / checkpoint / LOSS_WINDOW_NAME.format(0)).is_file()
        # train()'s own training_loss stays the mean over the steps of this call (steps after the checkpoint)
        first = int(checkpoint.split("-")[1])
        window = json.loads((tmp_path / "full" / checkpoint / LOSS_WINDOW_NAME.format(0)).read_text())
        before = sum(loss * 2 for step, loss in expected if step <= first) + window["tr_loss"]
        assert out.training_loss == pytest.approx((expected_train_loss * 7 - before) / (7 - first), rel=1e-5)


def test_a_checkpoint_without_the_window_resumes_as_transformers_does(tmp_path):
    full = _plain(tmp_path / "full")
    full.train()
    old = tmp_path / "old-checkpoint-3"
    shutil.copytree(tmp_path / "full" / "checkpoint-3", old)
    os.remove(old / LOSS_WINDOW_NAME.format(0))  # a checkpoint written before the window was saved
    resumed = _plain(tmp_path / "res")
    out = resumed.train(resume_from_checkpoint=str(old))
    losses = dict(_losses(resumed))
    assert restored_loss_window(resumed) is None
    assert set(losses) == {2, 4, 6} and losses[6] == dict(_losses(full))[6]
    assert losses[4] != dict(_losses(full))[4]  # the window restarted at step 3: step 4's loss alone
    assert _whole_run(resumed, out) is None  # step 3's loss was never recorded


def test_a_malformed_window_is_refused_before_training(tmp_path):
    full = _plain(tmp_path / "full")
    full.train()
    bad = tmp_path / "bad-checkpoint-3"
    shutil.copytree(tmp_path / "full" / "checkpoint-3", bad)
    path = bad / LOSS_WINDOW_NAME.format(0)
    record = json.loads(path.read_text())
    for broken, match in (
        ({**record, "tr_loss": "1.5"}, "'tr_loss' is '1.5', not a number"),
        ({**record, "global_step": 5}, "saved at global_step 5, the checkpoint at 3"),
        ({**record, "last_logged_step": 4}, "last_logged_step 4 is after global_step 3"),
    ):
        path.write_text(json.dumps(broken))
        resumed = _plain(tmp_path / "res")
        with pytest.raises(ValueError, match=match) as err:
            resumed.train(resume_from_checkpoint=str(bad))
        assert LOSS_WINDOW_NAME.format(0) in str(err.value) and "delete" in str(err.value)
        assert resumed.state.global_step == 0  # nothing was restored or trained
    path.write_text(json.dumps(record).replace('"tr_loss": ' + json.dumps(record["tr_loss"]), '"tr_loss": NaN'))
    with pytest.raises(ValueError, match="bare NaN is not strict JSON"):
        read_loss_window(str(bad))


def test_window_files_are_strict_json_and_keep_non_finite_sums(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    for value in (float("nan"), float("inf"), float("-inf"), 0.1 + 0.2):
        window = dict(global_step=5, last_logged_step=4, tr_loss=value, tr_loss_mean=value, world_size=1)
        path = write_loss_window(str(tmp_path), 0, window)
        json.loads(open(path).read(), parse_constant=lambda token: pytest.fail(f"non-strict {token}"))
        back = read_loss_window(str(tmp_path))
        assert back["last_logged_step"] == 4 and back["global_step"] == 5
        assert (math.isnan(value) and math.isnan(back["tr_loss"])) or back["tr_loss"] == value


def test_another_process_count_restores_the_mean_over_the_saving_processes(tmp_path):
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 3}))
    for rank, local in enumerate((1.0, 3.0)):
        write_loss_window(str(tmp_path), rank, dict(global_step=3, last_logged_step=2, tr_loss=local,
                                                    tr_loss_mean=2.0, world_size=2))  # fmt: skip
    assert read_loss_window(str(tmp_path), 1, 2)["tr_loss"] == 3.0  # the same layout: each process its own
    assert read_loss_window(str(tmp_path), 0, 1)["tr_loss"] == 2.0  # one process now: the mean
    assert read_loss_window(str(tmp_path), 2, 3)["tr_loss"] == 2.0  # a process that saved none: the mean


def test_every_hf_ext_trainer_saves_and_restores_the_window():
    from hf_ext.federated import PrivateTrainer
    from hf_ext.fp8 import Fp8Trainer
    from hf_ext.grape import GrapeTrainer
    from hf_ext.metadata import MetadataTrainer
    from hf_ext.neuralgrok import NeuralGrokTrainer
    from hf_ext.optim import CubicNewtonTrainer, WarmupFreeTrainer

    for cls in (WarmupFreeTrainer, CubicNewtonTrainer, GrapeTrainer, Fp8Trainer, PrivateTrainer, NeuralGrokTrainer,
                MetadataTrainer):  # fmt: skip
        assert issubclass(cls, LossWindowResumeMixin), cls.__name__
    from transformers import Trainer

    assert with_loss_window(Trainer) is with_loss_window(Trainer) and with_loss_window(WarmupFreeTrainer) is (
        WarmupFreeTrainer
    )


class _Ranks:
    def __init__(self, others):
        self.others = others

    def reduce(self, tensor, reduction):
        return (tensor + sum(self.others)) / (1 + len(self.others))


def test_whole_run_loss_on_two_ranks_counts_the_restored_window_once():
    # resumed at 3 with the window of step 3 restored (ranks' mean 5.0); logs at 4 (mean of steps 3-4: 4.5, so step
    # 4's ranks' mean is 4.0), step 5 unlogged: 3.0 on this rank and 1.0 on the other. train() returns this call's
    # rank-local mean: (gathered log sum 9.0 - restored 5.0 + tail 3.0) / 2
    logs = [{"step": 2, "loss": 6.0}, {"step": 4, "loss": 4.5}]
    trainer = SimpleNamespace(
        state=SimpleNamespace(log_history=logs, global_step=5),
        _initial_global_step=3,
        _hf_ext_restored_loss_window=(2, 5.0),
        args=SimpleNamespace(world_size=2, device=torch.device("cpu")),
        accelerator=_Ranks([1.0]),
    )
    assert whole_run_train_loss(trainer, (9.0 - 5.0 + 3.0) / 2) == pytest.approx((2 * 6.0 + 5.0 + 4.0 + 2.0) / 5)
