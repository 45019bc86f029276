"""CubicNewtonTrainer refuses --cubic_hessian dense above CubicNewton's dense limit at construction, by flag (cn33 F3)."""

import pytest
import torch
from torch import nn

from hf_ext.optim import CubicNewtonTrainer, CubicNewtonTrainingArguments


class _LM(nn.Module):
    def __init__(self, vocab, dim):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, input_ids, labels=None):
        logits = self.head(torch.tanh(self.emb(input_ids)))
        return {"loss": nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))}


def _args(out, hessian):
    solver = "exact" if hessian == "dense" else "lanczos"
    return CubicNewtonTrainingArguments(
        output_dir=str(out), cubic_hessian=hessian, cubic_solver=solver, max_steps=1, use_cpu=True, report_to="none"
    )


def test_dense_hessian_above_the_limit_is_refused_by_flag_before_anything_is_written(tmp_path):
    """It used to pass construction and fail inside train(), naming `hessian='dense'` / `dense_max_dim`."""
    out = tmp_path / "out"
    with pytest.raises(
        ValueError, match=r"--cubic_hessian dense .* 6100 trainable .* --cubic_hessian window or fresh"
    ):
        CubicNewtonTrainer(model=_LM(100, 30), args=_args(out, "dense"))
    assert not out.exists()


def test_dense_hessian_within_the_limit_and_window_above_it_are_accepted(tmp_path):
    CubicNewtonTrainer(model=_LM(16, 6), args=_args(tmp_path / "a", "dense"))
    CubicNewtonTrainer(model=_LM(100, 30), args=_args(tmp_path / "b", "window"))
