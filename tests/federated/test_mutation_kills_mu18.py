"""Mutation run 18: the Goldfish short-row warning at its boundary, and `measure_memorization`'s prompt lengths and
default generation budget.

A row of `L` real tokens has `L - 1` targets; Goldfish drops only targets `t >= h - 1`, so a row with fewer than `h`
targets has none dropped and `apply_goldfish` warns, while a row with exactly `h` targets (one droppable) must not.
This holds on both paths: unpadded batches (length `h` warns, `h + 1` does not) and per-row with an attention mask.

`measure_memorization` probes each distinct prefix length once, shortest first, and generates at most `window + 10`
tokens unless told otherwise (the documented default: slack for re-tokenization).
"""

import warnings

import torch

from hf_ext.federated import apply_goldfish, goldfish_drop_mask, measure_memorization
from hf_ext.federated.memorization import make_canaries

H = 13


def _goldfish_warnings(*args, **kwargs):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = apply_goldfish(*args, **kwargs)
    return out, [w for w in record if "fewer targets than the hashed window" in str(w.message)]


def test_an_unpadded_batch_of_h_tokens_warns_and_one_of_h_plus_1_does_not():
    short = torch.arange(1, H + 1).repeat(2, 1)  # H tokens per row: H - 1 targets, nothing can be dropped
    out, record = _goldfish_warnings(short.clone(), k=2, context_width=H)
    assert len(record) == 1 and torch.equal(out, short)
    # the same with an all-ones attention mask (the unpadded path too)
    _, record = _goldfish_warnings(short.clone(), k=2, context_width=H, attention_mask=torch.ones_like(short))
    assert len(record) == 1
    long = torch.arange(1, H + 2).repeat(2, 1)  # H + 1 tokens: H targets, the last one droppable
    _, record = _goldfish_warnings(long.clone(), k=2, context_width=H)
    assert record == []


def test_a_padded_row_with_exactly_h_targets_does_not_warn():
    ids = torch.tensor([list(range(1, H + 2)) + [0], list(range(2, H + 4))])  # H + 1 real tokens + a pad; H + 2
    mask = torch.ones_like(ids)
    mask[0, -1] = 0
    out, record = _goldfish_warnings(ids.clone(), k=2, context_width=H, input_ids=ids, attention_mask=mask)
    assert record == []
    # row 0's drops are those of its unpadded targets (only the last one, at position H, can be dropped)
    drop = goldfish_drop_mask(ids[0, 1 : H + 1].unsqueeze(0), 2, H)[0]
    assert not drop[: H - 1].any()
    assert (out[0, 1 : H + 1] == -100).tolist() == drop.tolist()
    # one real token fewer: H - 1 targets in row 0, none droppable -> one warning
    mask[0, -2] = 0
    _, record = _goldfish_warnings(ids.clone(), k=2, context_width=H, input_ids=ids, attention_mask=mask)
    assert len(record) == 1


class _RecordingOracle(torch.nn.Module):
    """Continues the memorized token lists exactly (then a filler token); records each `generate` call's prompt
    length and token budget."""

    def __init__(self, memorized, filler):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.memorized, self.filler, self.calls = memorized, filler, []

    def generate(self, input_ids, max_new_tokens, **kwargs):
        self.calls.append((input_ids.shape[1], max_new_tokens))
        rows = []
        for row in input_ids.tolist():
            n = len(row)
            cont = next(ids[s:] for ids in self.memorized for s in range(n, len(ids) + 1) if ids[s - n : s] == row)
            rows.append(row + (cont + [self.filler] * max_new_tokens)[:max_new_tokens])
        return torch.tensor(rows)


def test_memorization_probes_each_prefix_length_once_with_window_plus_10_new_tokens(small_tokenizer):
    canaries = make_canaries(3, {1: 1.0}, num_words=40, seed=0)
    memorized = [small_tokenizer(c.text, add_special_tokens=False)["input_ids"] for c in canaries]
    model = _RecordingOracle(memorized, filler=small_tokenizer.convert_tokens_to_ids("Z"))
    res = measure_memorization(
        model, small_tokenizer, canaries, prefix_lengths=(10, 4, 10), window=12, frequency_penalty=0.0
    )
    assert model.calls == [(4, 22), (10, 22)]  # one batch per distinct length, shortest first; 12 + 10 new tokens
    assert res["num_skipped"] == 0 and len(res["records"]) == 3 * 2
    assert [r["prefix_length"] for r in res["records"]] == [4] * 3 + [10] * 3
    assert all(r["exact"] for r in res["records"])  # the oracle continues every canary exactly
    assert res["overall"]["exact"] == {4: 1.0, 10: 1.0}
    model.calls.clear()
    measure_memorization(model, small_tokenizer, canaries, prefix_lengths=(4,), window=12, max_new_tokens=15)
    assert model.calls == [(4, 15)]
