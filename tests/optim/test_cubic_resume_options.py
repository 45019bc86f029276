"""CubicNewtonTrainer resumed with other `--cubic_*` options: torch's `load_state_dict` restores the whole param
group, where CubicNewton keeps its configuration, so the run used to go on with the checkpoint's options (bit-identical
to the old run) while its arguments named the new ones. Now refused before any step, naming the flags; what the step
itself changes (lr under a schedule, M under the adaptive rule) still resumes."""

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 4)
        self.b = nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.b(torch.tanh(self.a(x))).squeeze(-1)
        return {"loss": ((out - labels) ** 2).mean(), "logits": out}


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, generator=g)
    y = torch.sin(x.sum(-1))
    return [{"x": x[i], "labels": y[i]} for i in range(24)]


def _trainer(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=4,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        cubic_M=10.0,
        cubic_krylov_dim=4,
    )
    base.update(kw)
    torch.manual_seed(0)
    return CubicNewtonTrainer(model=_Net(), args=CubicNewtonTrainingArguments(**base), train_dataset=_data())


def test_a_resume_with_other_cubic_options_is_refused_by_flag_before_any_step(tmp_path):
    _trainer(tmp_path / "a", cubic_solver="lanczos", cubic_momentum="hessian_corrected").train()
    checkpoint = tmp_path / "a" / "checkpoint-2"
    new = dict(cubic_M=1000.0, cubic_solver="gd", cubic_momentum="ema", cubic_alpha=0.9, cubic_hessian="window")
    resumed = _trainer(tmp_path / "b", **new)
    with pytest.raises(ValueError) as err:
        resumed.train(resume_from_checkpoint=str(checkpoint))
    message = str(err.value)
    for part in (
        "--cubic_M 10.0 in the checkpoint, 1000.0 now",
        "--cubic_solver 'lanczos' in the checkpoint, 'gd' now",
        "--cubic_momentum 'hessian_corrected' in the checkpoint, 'ema' now",
        "--cubic_alpha 0.1 in the checkpoint, 0.9 now",
        "--cubic_hessian 'fresh' in the checkpoint, 'window' now",
    ):
        assert part in message
    assert resumed.state.global_step == 2 and resumed._cubic_optimizer()._st["step"] == 2  # no step taken
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").glob("checkpoint-*"))


def test_one_changed_option_is_refused_alone(tmp_path):
    _trainer(tmp_path / "a").train()
    with pytest.raises(ValueError, match=r"other CubicNewton options: --cubic_convention 'M/6' in the checkpoint, "
                                         r"'M/3' now\. A resume"):  # fmt: skip
        _trainer(tmp_path / "b", cubic_convention="M/3").train(resume_from_checkpoint=str(tmp_path / "a/checkpoint-2"))


def test_lr_schedule_and_adaptive_M_resume_with_the_same_options(tmp_path):
    """The lr scheduler changes the group's `lr` and the adaptive rule its `M` every step: not a changed option."""
    kw = dict(lr_scheduler_type="linear", cubic_M_rule="adaptive", cubic_momentum="none", cubic_M=0.01)
    full = _trainer(tmp_path / "a", **kw)
    full.train()
    resumed = _trainer(tmp_path / "b", **kw)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    M = [r["cubic/M"] for r in full.state.log_history if "cubic/M" in r]
    assert M[1] != 0.01  # the adaptive rule changed M before the checkpoint: comparing it would refuse this resume


def test_a_changed_learning_rate_is_not_a_cubic_option(tmp_path):
    """`lr` is left to transformers (its scheduler state is restored as for every optimizer)."""
    _trainer(tmp_path / "a").train()
    _trainer(tmp_path / "b", learning_rate=0.5).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
