"""Fixes of audit op17 (hf_ext/optim normalized optimizers, scripts/bench_optim.py).

1. `LionAR(params, model=model)` / `RotationalWrapper(params, model=model)` refused a frozen parameter of that model
   ("not a trainable parameter of `model`; pass the model these parameters belong to", although that model was
   passed). A frozen tensor is now kept with the layout it would have if trainable and skipped by `step()` while it
   has no gradient; only a tensor that is not in `model.parameters()` at all is refused, and the message says so.
2. scripts/bench_optim.py benchmarked `--vocab_size 0` (a model without embedding and head) and printed a repeated
   optimizer name twice from one measurement; `--threads 0` was silently ignored.
"""

from __future__ import annotations

import copy
import os
import runpy

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from hf_ext.optim import LionAR, RotationalWrapper

# ----------------------------------------------------------------------------------------------------------------------
# 1. frozen parameters of `model=`
# ----------------------------------------------------------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.l1 = nn.Linear(8, 8)
        self.proj = Conv1D(8, 8)  # (in, out): its neurons are columns
        self.ln = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, ids):
        return self.head(self.ln(self.proj(torch.relu(self.l1(self.emb(ids))))))


def _frozen_net():
    torch.manual_seed(0)
    model = _Net()
    model.emb.requires_grad_(False)  # frozen embeddings, as in many fine-tunes
    model.proj.requires_grad_(False)  # a frozen rotational (Conv1D) weight
    return model


def _build(kind, params, model):
    if kind == "lion_ar":
        return LionAR(params, model=model, lr=1e-3, weight_decay=1.0)
    return RotationalWrapper(params, model=model, lr=1e-3, weight_decay=0.1)


def _train(model, opt, steps=3):
    ids = torch.arange(10).reshape(2, 5)
    for _ in range(steps):
        opt.zero_grad()
        model(ids).square().mean().backward()
        opt.step()


@pytest.mark.parametrize("kind", ["lion_ar", "rotational_adamw"])
def test_frozen_parameters_of_the_model_are_accepted_and_left_untouched(kind):
    model = _frozen_net()
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = copy.deepcopy(model)
    opt = _build(kind, model.parameters(), model)  # used to raise "not a trainable parameter of `model`"
    ref_opt = _build(kind, [p for p in reference.parameters() if p.requires_grad], reference)
    _train(model, opt)
    _train(reference, ref_opt)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, initial[name]), name
        else:  # the trainable tensors train exactly as without the frozen ones in `params`
            assert not torch.equal(p, initial[name]), name
            assert torch.equal(p, reference.get_parameter(name)), name


@pytest.mark.parametrize("kind", ["lion_ar", "rotational_adamw"])
def test_a_frozen_tensor_gets_the_layout_it_would_have_if_trainable(kind):
    model = _frozen_net()
    opt = _build(kind, model.parameters(), model)
    layout = {
        id(p): (g["rotational"], g["neuron_dim"]) for g in opt.param_groups for p in g["params"]
    }  # fmt: skip
    assert layout[id(model.proj.weight)] == (True, 1)  # Conv1D: columns are neurons
    assert layout[id(model.emb.weight)][0] is False  # embeddings stay plain
    assert layout[id(model.l1.weight)] == (True, 0)
    # unfrozen later, the Conv1D weight rotates with its column norms kept (a row layout would change them)
    model.proj.requires_grad_(True)
    norms = model.proj.weight.detach().norm(dim=0).clone()
    before = model.proj.weight.detach().clone()
    _train(model, opt)
    assert not torch.equal(model.proj.weight, before)
    torch.testing.assert_close(model.proj.weight.detach().norm(dim=0), norms, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["lion_ar", "rotational_adamw"])
def test_a_tensor_outside_the_model_is_refused_naming_the_case(kind):
    model = _frozen_net()
    other = nn.Linear(8, 8)
    with pytest.raises(ValueError, match=r"shape \(8, 8\) in `params` is not in `model.parameters\(\)`") as err:
        _build(kind, [*model.parameters(), other.weight], model)
    assert "trainable" not in str(err.value)


# ----------------------------------------------------------------------------------------------------------------------
# 2. scripts/bench_optim.py arguments
# ----------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(repo_root):
    return runpy.run_path(os.path.join(repo_root, "scripts", "bench_optim.py"))


_TINY = ["--hidden_size", "64", "--layers", "1", "--rounds", "1", "--device", "cpu"]


@pytest.mark.parametrize(
    "flag, value", [("--vocab_size", "0"), ("--vocab_size", "-3"), ("--threads", "0"), ("--threads", "-2")]
)
def test_bench_refuses_sizes_below_one_by_name(bench, flag, value, capsys):
    threads = torch.get_num_threads()
    with pytest.raises(ValueError, match=rf"{flag} must be >= 1, got {value}"):
        bench["main"]([*_TINY, "--optimizers", "lion_ar", flag, value])
    assert torch.get_num_threads() == threads  # refused before anything was set
    assert "{" not in capsys.readouterr().out  # and before any row was printed


@pytest.mark.parametrize("names", ["rotational_adamw,rotational_adamw", "lion_ar,adamw,lion_ar", "adamw,adamw"])
def test_bench_refuses_a_repeated_optimizer_by_name(bench, names, capsys):
    repeated = sorted({n for n in names.split(",") if names.split(",").count(n) > 1})
    with pytest.raises(ValueError, match=rf"--optimizers lists {repeated[0]!r} more than once"):
        bench["main"]([*_TINY, "--vocab_size", "128", "--optimizers", names])
    assert "{" not in capsys.readouterr().out
