"""Audit pass 43 (sm54): memorization probes.

1. A prompt's token ids outside the model's input embedding were refused by name only when the forward raised an
   `IndexError` (CPU). On CUDA the embedding lookup is a device-side assert instead (a `RuntimeError` that also poisons
   the CUDA context), so the named refusal never came. The ids are now checked on the host before any device work.
   CUDA cannot run here: the tests put the model on the meta device, whose embedding lookup does not raise
   `IndexError` either, and make every forward / `generate` fail as a device assert would.
2. Greedy extraction stopped at the end-of-sequence token only; the reference's vLLM stops on eos or pad
   (docs/federated.md, "Extraction"): a continuation through a padding token was decoded with the pad dropped and
   could count as exactly extracted.
"""

import random

import pytest
import torch

from hf_ext.federated import make_canaries, measure_memorization, text_losses
from hf_ext.federated.memorization import Canary, split_index

from .test_rv54_fixes import _llama


def _device_assert(*args, **kwargs):
    raise RuntimeError("CUDA error: device-side assert triggered")


@pytest.fixture
def foreign_vocabulary_model(monkeypatch):
    """A model with 100 embedding rows (the tokenizer has 512 tokens), on the meta device, whose every forward and
    `generate` fails as a CUDA device assert does: no device work may happen before the token ids are checked."""
    model = _llama(100, 256).to("meta")
    monkeypatch.setattr(model, "forward", _device_assert)
    monkeypatch.setattr(model, "generate", _device_assert)
    return model


def test_measure_memorization_checks_token_ids_before_any_generate(small_tokenizer, foreign_vocabulary_model):
    canaries = make_canaries(2, {1: 1.0}, num_words=60)
    model = foreign_vocabulary_model
    model.train()
    with pytest.raises(ValueError, match=r"prefix length 20 .*input embedding has 100 rows.*own tokenizer"):
        measure_memorization(model, small_tokenizer, canaries, (20, 30), window=50)
    assert model.training


def test_text_losses_check_token_ids_before_the_forward(small_tokenizer, foreign_vocabulary_model):
    with pytest.raises(ValueError, match=r"text 0 .*holds token id \d+, but the model's input embedding has 100 rows"):
        text_losses(foreign_vocabulary_model, small_tokenizer, ["Record 123-45: alpha amber anchor apple"])


def test_ids_inside_the_embedding_still_reach_the_model(small_tokenizer, monkeypatch):
    model = _llama(len(small_tokenizer), 256)
    calls = []
    forward = model.forward
    monkeypatch.setattr(model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    assert len(text_losses(model, small_tokenizer, ["Record 123-45: alpha amber anchor apple"])) == 1 and calls


def test_extraction_stops_at_the_padding_token(small_tokenizer, monkeypatch):
    """A continuation equal to the canary's but for one padding token after 5 tokens: the reference stops there
    (5 matching tokens, not extracted); decoded with the pad dropped it used to score as exactly extracted."""
    tok = small_tokenizer
    assert tok.pad_token_id is not None and tok.pad_token_id != tok.eos_token_id
    canary = make_canaries(1, {1: 1.0}, num_words=80)[0]
    ids = tok(canary.text, add_special_tokens=False)["input_ids"]
    s = split_index(len(ids), 20, 50, random.Random(42))
    assert s is not None and len(ids) - s >= 55
    model = _llama(len(tok), 256, tok)
    assert tok.pad_token_id not in {model.generation_config.eos_token_id, model.config.eos_token_id}

    def generate(input_ids, **kwargs):
        row = ids[s : s + 5] + [tok.pad_token_id] + ids[s + 5 : s + 54]
        return torch.cat([input_ids, torch.tensor([row] * input_ids.shape[0])], dim=1)

    monkeypatch.setattr(model, "generate", generate)
    out = measure_memorization(model, tok, [Canary("c", canary.text, 1)], (20,), window=50, seed=42)
    (record,) = out["records"]
    assert record["matching_tokens"] == 5 and record["exact"] is False, record
    # without the padding token the same continuation is exactly extracted (the fake model is right)
    whole = torch.tensor([ids[s : s + 60]])
    monkeypatch.setattr(model, "generate", lambda input_ids, **k: torch.cat([input_ids, whole], 1))
    (record,) = measure_memorization(model, tok, [Canary("c", canary.text, 1)], (20,), window=50, seed=42)["records"]
    assert record["exact"] is True
