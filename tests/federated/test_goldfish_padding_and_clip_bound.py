"""Goldfish under left padding, the clipping bound in low precision, and Goldfish integer arguments.

- Goldfish hashed windows over the padded row: a left-padded sequence had pad ids in the windows of its first targets
  and dropped other tokens than the same sequence alone (10 alone, 15 batched; its first h-1 targets were dropped,
  which the docs say never happens). With the attention mask the windows run over the real tokens only.
- `clip_per_sample` took norms in float32 and cast the factor to the gradient's dtype: clipped norms exceeded the clip
  norm by up to 0.3% (bfloat16) or 1.5e-7 relative (float32), so the sensitivity the noise and accountant assume was
  not a bound.
- `goldfish_k=2.5` was accepted when the arguments were built and `numpy.int64(4)` refused only inside `train()`.
"""

import numpy as np
import pytest
import torch
from transformers import DataCollatorForLanguageModeling

from hf_ext.federated import GoldfishCollator, apply_goldfish, clip_per_sample, goldfish_drop_mask


def _reference_labels(ids: list[int], k: int, h: int) -> list[int]:
    """The rule on the unpadded sequence alone, by hand: target t (position t of the sequence, t >= 1) is dropped iff
    the hash of the h tokens ending at it selects it (the package's own mask on an unpadded row is checked against
    the reference rule in test_mutation_kills.py)."""
    drop = goldfish_drop_mask(torch.tensor([ids[1:]]), k, h)[0].tolist()
    return [ids[0]] + [-100 if d else t for t, d in zip(ids[1:], drop)]


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("pad_id", [0, 2])
def test_a_padded_sequence_drops_the_tokens_it_drops_alone(small_tokenizer, side, pad_id):
    tok = small_tokenizer
    text = "Record 481-22: the patient was admitted on monday with chest pain and shortness of breath, treated."
    longer = text + " A follow-up visit is scheduled in two weeks with the cardiology clinic downstairs."
    ids = tok(text)["input_ids"]
    expected = _reference_labels(ids, 4, 13)
    assert -100 in expected and all(x != -100 for x in expected[:13])  # meaningful: drops, none in the first h-1
    tok.padding_side, old_pad = side, tok.pad_token_id
    try:
        collator = GoldfishCollator(DataCollatorForLanguageModeling(tok, mlm=False), k=4, context_width=13)
        batch = collator([{"input_ids": ids}, tok(longer)])
        if pad_id != old_pad:  # the same batch with another pad id: hash-table entry 0 selects (0.2337 < 1/4)
            ids_b = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, pad_id)
            labels = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": ids}, tok(longer)])["labels"]
            batch["labels"] = apply_goldfish(labels, 4, 13, ids_b, attention_mask=batch["attention_mask"])
    finally:
        tok.padding_side = "right"
    real = batch["attention_mask"][0].bool()
    assert batch["labels"][0][real].tolist() == expected


def test_unpadded_batches_are_unchanged_by_the_mask():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(3, 500, (3, 40), generator=gen)
    plain = apply_goldfish(ids.clone(), 3, 5, ids)
    assert torch.equal(apply_goldfish(ids.clone(), 3, 5, ids, attention_mask=torch.ones_like(ids)), plain)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("clip", [1e-2, 1.0, 100.0])
def test_every_clipped_norm_is_at_most_the_clip_norm_as_stored(dtype, clip):
    gen = torch.Generator().manual_seed(3)
    grads = {
        "a": (torch.randn(512, 37, 11, generator=gen) * 50).to(dtype),
        "b": (torch.randn(512, 5, generator=gen) * 50).to(dtype),
    }
    grads["a"][:4] *= 1e-4  # a few rows below the clip norm are left exactly as they are
    clipped, norms = clip_per_sample(grads, clip)
    after = sum(g.reshape(512, -1).double().pow(2).sum(1) for g in clipped.values()).sqrt()  # float64, stored values
    assert float(after.max()) <= clip  # was up to 1.0029 * clip for bfloat16
    small = norms <= clip
    for g, c in zip(grads.values(), clipped.values()):
        assert torch.equal(c[small], g[small])
    # clipping is still a scaling to the clip norm (not a shrink beyond rounding)
    assert float(after[~small].min()) >= clip * (1 - 8 * torch.finfo(dtype).eps)


def test_goldfish_integers_are_checked_when_the_arguments_are_built(tmp_path):
    from hf_ext.federated import PrivateTrainingArguments

    def build(**kw):
        return PrivateTrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", **kw)

    with pytest.raises(ValueError, match="--goldfish_k must be an integer >= 2"):
        build(goldfish_k=2.5)  # was: accepted here, refused in train()
    with pytest.raises(ValueError, match="--goldfish_context_width must be an integer >= 1"):
        build(goldfish_k=4, goldfish_context_width=2.5)
    args = build(goldfish_k=np.int64(4), goldfish_context_width=np.int64(13))  # was: refused in train()
    assert type(args.goldfish_k) is int and type(args.goldfish_context_width) is int
    GoldfishCollator(lambda f: f, k=np.int64(4), context_width=np.int64(13))
    assert goldfish_drop_mask(torch.ones(1, 20, dtype=torch.long), np.int64(4), np.int64(13)).shape == (1, 20)
