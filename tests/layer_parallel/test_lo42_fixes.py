"""Layer-pairing sweep ranges (lo42).

* `perplexity_sweep(model, ds, ranges=[(0, 0), (0, 2)])` measured the source twice: the first row (always the unpaired
  source) and a second `start=0, end=0, pairs=0` row for the empty range, which `choose_range` and the table then
  treated as a candidate. An empty range (`start == end`) is now refused by `check_sweep_ranges`, naming it, as
  `layer_pairing_task_sweep` already refused it.
* `check_sweep_ranges(..., layer_types)` refuses a range pairing a full with a sliding-window layer, naming the range.
  In `perplexity_sweep` the later config check also refuses it before any evaluation, but without naming the range
  (mutation SW4, dropping the check, survived); the range-named message and the direct call are pinned here.
"""

import pytest
import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from hf_ext.models.layer_parallel import sweep as sweep_module
from hf_ext.models.layer_parallel.sweep import check_sweep_ranges

MIXED = ["full_attention", "full_attention", "sliding_attention", "sliding_attention"]


def _llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)  # fmt: skip
    return LlamaForCausalLM(cfg).eval()


def _mixed_qwen2():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      use_sliding_window=True, sliding_window=8, max_window_layers=2)  # fmt: skip
    model = Qwen2ForCausalLM(cfg).eval()
    assert model.config.layer_types == MIXED
    return model


def _blocks():
    ids = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


@pytest.fixture
def no_evaluation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("evaluated before the ranges were checked")

    monkeypatch.setattr(sweep_module, "evaluate_causal_lm", refuse)


@pytest.mark.parametrize("empty", [(0, 0), (2, 2), (4, 4)])
def test_an_empty_range_is_refused_by_name(empty):
    with pytest.raises(
        ValueError, match=rf"ranges: \({empty[0]}, {empty[1]}\) pairs no layers: the sweep's first row"
    ):
        check_sweep_ranges([(0, 2), empty], 4)


def test_sweep_refuses_an_empty_range_before_evaluating(no_evaluation):
    with pytest.raises(ValueError, match=r"ranges: \(0, 0\) pairs no layers"):
        sweep_module.perplexity_sweep(_llama(), _blocks(), ranges=[(0, 0), (0, 2)], progress=False)


def test_sweep_has_one_source_row():
    rows = sweep_module.perplexity_sweep(_llama(), _blocks(), ranges=[(0, 2)], progress=False)
    assert [(r["start"], r["end"], r["pairs"]) for r in rows] == [(0, 0, 0), (0, 2, 1)]
    assert sweep_module.perplexity_sweep(_llama(), _blocks(), ranges=[], progress=False)[0]["ppl_ratio"] == 1.0


def test_check_sweep_ranges_refuses_a_range_mixing_attention_types():
    assert check_sweep_ranges([(0, 2), (2, 4), (0, 4)], 4, MIXED) == [(0, 2), (2, 4), (0, 4)]
    assert check_sweep_ranges([(1, 3)], 4) == [(1, 3)]  # without layer_types: not checked
    with pytest.raises(ValueError, match=r"^ranges: \(1, 3\): Layers 1 and 2 use different attention types"):
        check_sweep_ranges([(0, 2), (1, 3)], 4, MIXED)


def test_sweep_names_the_range_that_mixes_attention_types(no_evaluation):
    # the later config check refuses it too, but as "Layers 1 and 2 ..." without the range
    with pytest.raises(ValueError, match=r"^ranges: \(1, 3\): Layers 1 and 2 use different attention types"):
        sweep_module.perplexity_sweep(_mixed_qwen2(), _blocks(), ranges=[(0, 2), (1, 3)], progress=False)
