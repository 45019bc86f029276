"""rv44: the recipe's `--document_attention` pre-check (`check_documents_kept_apart`, md43) builds a one-layer model
of the run's config on every process's CPU before any write. With a pretrained model's vocabulary it kept the whole
embedding and LM head: for a Llama 3 8B config (128256 x 4096) the probe had 1.27B parameters and took 116 s and
5.6 GB to build here, plus 29 s for its two forward passes. The mask does not depend on the vocabulary: the probe now
has at most 256 rows (special token ids beyond them are dropped from its config), and refuses and accepts as before."""

from __future__ import annotations

import pytest

from .conftest import run_pre_write_probe


def _probe_vocab(monkeypatch, tmp_path, config, seen):
    run_pre_write_probe(monkeypatch, tmp_path, config, seen, lambda model: model.get_input_embeddings().num_embeddings)
    return seen[0]


def test_the_probe_of_a_large_vocabulary_is_small_and_still_accepts(monkeypatch, tmp_path):
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=32000, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, pad_token_id=31999, bos_token_id=1, eos_token_id=31998,
    )  # fmt: skip
    assert _probe_vocab(monkeypatch, tmp_path, config, []) == 256


def test_the_probe_of_a_large_vocabulary_still_refuses_opt(monkeypatch, tmp_path):
    from transformers import OPTConfig

    config = OPTConfig(
        vocab_size=50272, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
    )  # fmt: skip
    seen = []
    with pytest.raises(ValueError, match=r"OPTForCausalLM does not keep packed documents apart"):
        _probe_vocab(monkeypatch, tmp_path / "opt", config, seen)
    assert seen == [256]
