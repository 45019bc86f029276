"""hf29 F1: `GrokDecoderForCausalLM._init_weights` did nothing, so the weights `from_pretrained` does not find in a
checkpoint (another vocabulary with `ignore_mismatched_sizes=True`, a checkpoint lacking a weight) were left as
uninitialised memory (embedding std ~1e25, non-finite logits). They now get PyTorch's default initialisation, as the
constructor gives; the constructor's weights for a seed are unchanged.

hf29 F2: its forward took `output_hidden_states`, `output_attentions`, `return_dict=False` and `shift_labels` into
`**kwargs` and ignored them (hidden states / attentions None, a `CausalLMOutput` instead of a tuple, the loss taken
against `labels` instead of the pre-shifted targets). transformers' common model tests failed on each."""

import math

import pytest
import torch
from torch import nn

from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM

CFG = dict(vocab_size=40, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=16)


def _saved(tmp_path, **kw):
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(**{**CFG, **kw}))
    model.save_pretrained(tmp_path)
    return model


def test_weights_missing_from_a_checkpoint_get_the_default_initialisation(tmp_path):
    saved = _saved(tmp_path)
    # another task vocabulary: embeddings and head are new, everything else is loaded
    model = GrokDecoderForCausalLM.from_pretrained(tmp_path, vocab_size=57, ignore_mismatched_sizes=True)
    emb, head = model.token_embeddings.weight, model.head.weight
    assert emb.shape == (57, 64) and head.shape == (57, 64)
    assert 0.8 < emb.std().item() < 1.2 and emb.abs().max().item() < 10  # N(0, 1)
    bound = 1 / math.sqrt(64)  # Kaiming-uniform(a=sqrt(5)) of nn.Linear
    assert head.abs().max().item() <= bound and head.std().item() > bound / 4
    for name, value in saved.state_dict().items():
        if not name.startswith(("token_embeddings", "head")):
            assert torch.equal(model.state_dict()[name], value), name  # loaded weights are kept
    ids = torch.randint(0, 57, (2, 6))
    assert torch.isfinite(model(input_ids=ids).logits).all()


def test_a_model_loaded_without_any_weight_is_initialised_like_the_constructor():
    model = GrokDecoderForCausalLM.from_pretrained(None, config=GrokDecoderConfig(**CFG), state_dict={})
    for norm in [model.ln_f, *(m for layer in model.layers for m in (layer.ln_1, layer.ln_2))]:
        assert torch.equal(norm.weight, torch.ones(64)) and torch.equal(norm.bias, torch.zeros(64))
    attn = model.layers[0].attn
    assert torch.equal(attn.in_proj_bias, torch.zeros(3 * 64)) and torch.equal(attn.out_proj.bias, torch.zeros(64))
    xavier = math.sqrt(6 / (64 + 3 * 64))
    assert attn.in_proj_weight.abs().max().item() <= xavier and attn.in_proj_weight.std().item() > xavier / 4
    assert 0.8 < model.position_embeddings.weight.std().item() < 1.2
    ids = torch.randint(0, CFG["vocab_size"], (2, 6))
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("tie", [False, True])
def test_the_constructor_keeps_pytorch_default_weights_for_a_seed(tie):
    """`post_init` must not draw the weights again: a seed gives the weights of the plain PyTorch modules built in
    the same order (the reproductions' initial weights), and leaves the generator in the same state."""
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(**CFG, tie_word_embeddings=tie))
    after_model = torch.rand(3)
    torch.manual_seed(0)
    dim = CFG["hidden_size"]
    plain = [nn.Embedding(CFG["vocab_size"], dim), nn.Embedding(CFG["max_position_embeddings"], dim)]
    for _ in range(CFG["num_hidden_layers"]):
        plain += [nn.LayerNorm(dim), nn.MultiheadAttention(dim, CFG["num_attention_heads"], batch_first=True)]
        plain += [nn.LayerNorm(dim), nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))]
    plain += [nn.LayerNorm(dim), nn.Linear(dim, CFG["vocab_size"], bias=False)]
    after_plain = torch.rand(3)
    expected = [t for module in plain for t in module.state_dict().values()]
    got = list(model.state_dict().values())
    if tie:  # the head is the embedding matrix
        expected = expected[:-1]
        got = [t for name, t in model.state_dict().items() if name != "head.weight"]
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    assert torch.equal(after_model, after_plain)


def _small():
    torch.manual_seed(0)
    return GrokDecoderForCausalLM(GrokDecoderConfig(**CFG)).eval()


def test_hidden_states_and_attentions_are_returned_when_asked_for():
    model = _small()
    ids = torch.randint(0, CFG["vocab_size"], (3, 7))
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    plain = model(input_ids=ids, attention_mask=mask)
    assert plain.hidden_states is None and plain.attentions is None
    out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True, output_attentions=True)
    torch.testing.assert_close(out.logits, plain.logits)
    assert len(out.hidden_states) == CFG["num_hidden_layers"] + 1
    assert all(h.shape == (3, 7, 64) for h in out.hidden_states)
    torch.testing.assert_close(model.head(model.ln_f(out.hidden_states[-1])), plain.logits)
    assert len(out.attentions) == CFG["num_hidden_layers"]
    for weights in out.attentions:
        assert weights.shape == (3, CFG["num_attention_heads"], 7, 7)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, CFG["num_attention_heads"], 7))
        assert torch.all(weights.triu(diagonal=1) == 0)  # causal
        assert torch.all(weights[1, :, 2:, :2] == 0)  # padded keys
    model.config.output_hidden_states = True  # the config default, as in transformers' models
    assert len(model(input_ids=ids).hidden_states) == CFG["num_hidden_layers"] + 1


def test_return_dict_false_gives_a_tuple_and_shift_labels_are_used():
    model = _small()
    ids = torch.randint(0, CFG["vocab_size"], (2, 6))
    out = model(input_ids=ids, labels=ids)
    loss, logits = model(input_ids=ids, labels=ids, return_dict=False)
    torch.testing.assert_close(loss, out.loss)
    torch.testing.assert_close(logits, out.logits)
    shifted = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)
    torch.testing.assert_close(model(input_ids=ids, shift_labels=shifted).loss, out.loss)
    other = torch.nn.functional.pad(ids[:, :-1], (0, 1), value=-100)
    assert not torch.allclose(model(input_ids=ids, labels=ids, shift_labels=other).loss, out.loss)
    # not a named parameter: Trainer's label columns stay ["labels"]
    from transformers.utils import find_labels

    assert find_labels(GrokDecoderForCausalLM) == ["labels"]
