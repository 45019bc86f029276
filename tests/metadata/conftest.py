"""Fixtures for metadata conditioning tests: a private tokenizer copy with context tokens and tiny models."""

import pytest


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """Tiny models run fastest single-threaded; on a busy 2-core machine two threads thrash."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ctx_tokenizer():
    """512-token BPE with <|context_begin|>/<|context_end|> added (a fresh copy: the shared fixture stays untouched)."""
    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import add_context_tokens

    tok = build_tokenizer(512)
    add_context_tokens(tok)
    return tok


def tiny_llama(vocab_size: int, seed: int = 0, hidden: int = 64):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


@pytest.fixture(scope="session")
def synthetic_setup():
    """Synthetic URL-determined corpus, a tokenizer trained on it (one token per word) and context tokens."""
    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import add_context_tokens, synthetic_url_corpus

    ds, vocab = synthetic_url_corpus(num_docs=1200, doc_words=32, seed=0)
    tok = build_tokenizer(vocab_size=1500, cache=False, texts=list(ds["text"]) + list(ds["url"]))
    add_context_tokens(tok)
    return ds, vocab, tok


def run_pre_write_probe(monkeypatch, tmp_path, config, seen: list, observe) -> None:
    """Run the metadata recipe's pre-write document-attention probe (`check_documents_kept_apart`) on `config`, saved
    as the run's model in `tmp_path`; `observe(probe_model)` is appended to `seen` for each model the probe checks."""
    from hf_ext.data.tokenizer import build_tokenizer
    from hf_ext.metadata import collator
    from hf_ext.recipes.metadata_pretrain import MetadataArguments, check_documents_kept_apart
    from hf_ext.recipes.pretrain import ModelArguments

    config.save_pretrained(tmp_path)
    real = collator.check_document_attention

    def spy(model):
        seen.append(observe(model))
        real(model)

    monkeypatch.setattr(collator, "check_document_attention", spy)
    data = type("Data", (), {"block_size": 64})
    try:
        check_documents_kept_apart(
            ModelArguments(model_name_or_path=str(tmp_path)), data, MetadataArguments(), build_tokenizer(512)
        )
    finally:
        assert seen, "the pre-write probe did not run"
