"""Mutation run 19 (fp8): tests for mutants that survived the fp8 suites.

- G1: a plain `nn.Module` whose LM head is a linear named `output` (torchtitan / Megatron naming, no
  `get_output_embeddings`) or `embed_out` keeps that head in high precision unless `include_lm_head=True`; a container
  that only shares the name (BERT's `layer.0.output`) is not the head.
- G3: `Fp8HealthCallback` rescales the learning rate on resume only by the part of its scale the checkpoint does not
  already hold: resuming (fresh callback, e.g. after an interrupt) from a checkpoint written after a rollback, whose
  optimizer already runs at the scaled LR, changes nothing; a rollback resuming a checkpoint of scale 0.5 with a
  callback at 0.25 halves it once.
- G4: a fractional WSD `num_decay_steps` is rounded to the nearest step (not truncated).
(G2, `scaling='current'` refusing `amax_compute_algo`, is covered by
tests/fp8/test_audit_fixes.py::test_convert_refuses_history_options_with_current_scaling_and_keeps_the_defaults_working.)
"""

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM, TrainerControl, TrainerState

from hf_ext.fp8 import Fp8HealthCallback, resolve_wsd_kwargs
from hf_ext.fp8.callback import STATE_KEY
from hf_ext.fp8.convert import fp8_target_modules


class _PlainLM(nn.Module):
    """No `get_output_embeddings`: the head is found by its name only."""

    def __init__(self, head_name: str):
        super().__init__()
        self.tok = nn.Embedding(64, 32)
        self.proj = nn.Linear(32, 32)
        setattr(self, head_name, nn.Linear(32, 64, bias=False))
        self.head_name = head_name

    def forward(self, x):
        return getattr(self, self.head_name)(self.proj(self.tok(x)))


@pytest.mark.parametrize("head_name", ["output", "embed_out", "lm_head"])
def test_a_head_found_by_its_name_stays_out_of_fp8_unless_included(head_name):
    model = _PlainLM(head_name)
    assert not hasattr(model, "get_output_embeddings")
    assert sorted(fp8_target_modules(model)) == ["proj"]
    assert sorted(fp8_target_modules(model, include_lm_head=True)) == sorted(["proj", head_name])


def test_a_block_linear_inside_a_container_named_output_is_converted():
    model = nn.Module()
    model.block = nn.Module()
    model.block.output = nn.Module()  # BERT-style container, not a head
    model.block.output.dense = nn.Linear(32, 32)
    assert fp8_target_modules(model) == ["block.output.dense"]


def _tiny_llama():
    return LlamaForCausalLM(
        LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2)
    )  # fmt: skip


def _resume(callback, checkpoint_lr, checkpoint_scale, tmp_path):
    """on_train_begin of a run resuming step 40 of a checkpoint whose optimizer runs at `checkpoint_lr` and whose
    callback state says lr_scale=`checkpoint_scale`."""
    model = _tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=checkpoint_lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    state = TrainerState()
    state.global_step = 40
    state.stateful_callbacks = {STATE_KEY: {"lr_scale": checkpoint_scale, "rollbacks": 1}}
    args = SimpleNamespace(output_dir=str(tmp_path), auto_find_batch_size=False)
    callback.on_train_begin(args, state, TrainerControl(), model=model, optimizer=opt, lr_scheduler=sched)
    return opt, sched


def test_resuming_a_checkpoint_written_after_a_rollback_keeps_its_learning_rate(tmp_path):
    callback = Fp8HealthCallback(action="rollback")  # fresh: the run was interrupted after the rollback
    opt, sched = _resume(callback, 5e-4, 0.5, tmp_path)  # the checkpoint already runs at 1e-3 x 0.5
    assert callback.lr_scale == 0.5
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4, rel=1e-12)
    assert sched.base_lrs == pytest.approx([5e-4], rel=1e-12)
    assert not any("learning rate scaled" in a for a in callback.actions_taken)


def test_a_rollback_to_a_checkpoint_of_half_scale_halves_the_lr_once_more(tmp_path):
    callback = Fp8HealthCallback(action="rollback")
    callback.lr_scale = 0.25  # two rollbacks so far; the target checkpoint was written after the first
    opt, sched = _resume(callback, 5e-4, 0.5, tmp_path)
    assert callback.lr_scale == 0.25
    assert opt.param_groups[0]["lr"] == pytest.approx(2.5e-4, rel=1e-12)
    assert sched.base_lrs == pytest.approx([2.5e-4], rel=1e-12)
    assert any("learning rate scaled by 0.5 " in a for a in callback.actions_taken)


@pytest.mark.parametrize("fraction, steps, expected", [(0.27, 10, 3), (0.19, 30, 6), (0.2, 12, 2), (0.38, 10, 4)])
def test_fractional_decay_steps_round_to_the_nearest_step(fraction, steps, expected):
    assert resolve_wsd_kwargs({"num_decay_steps": fraction}, steps)["num_decay_steps"] == expected
