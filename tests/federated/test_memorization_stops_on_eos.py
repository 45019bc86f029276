"""measure_memorization decodes greedily and stops at the end-of-sequence token, as the paper's reference does (vLLM,
temperature 0, stop on eos): a probe whose greedy continuation ends is scored on that shorter continuation. It used
to force exactly max_new_tokens (min_new_tokens), which masks EOS, took the runner-up token and could count the
canary as exactly extracted (audit fd14, finding E)."""

import pytest
import torch

from hf_ext.federated.memorization import Canary, measure_memorization

TEXT = "Record 512-77: amber falcon granite harbor lotus meadow orbit quartz raven summit velvet willow"
OTHER = "Note 31-904: cobalt ember glacier island jasper lagoon maple nectar onyx prairie saffron timber"


@pytest.fixture(scope="module")
def memorizing_model(small_tokenizer):
    """A tiny Llama that has memorized both texts (greedy decoding continues each of them exactly)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = small_tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=4, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )  # fmt: skip
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in (TEXT, OTHER)]
    n = min(len(i) for i in ids)
    batch = torch.tensor([i[:n] for i in ids])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(300):
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, [Canary("c0", tok.decode(ids[0][:n]), 10), Canary("c1", tok.decode(ids[1][:n]), 1)], n


def _prefer_eos(model, tok, when):
    """A hook that makes EOS the argmax of the next-token distribution wherever `when(argmax ids)` holds."""

    def hook(module, inputs, out):
        out = out.clone()
        last = out[:, -1]
        rows = when(last.argmax(dim=-1))
        last[rows, tok.eos_token_id] = last[rows].max(dim=-1).values + 5.0
        return out

    return model.lm_head.register_forward_hook(hook)


def test_a_probe_whose_greedy_continuation_ends_is_not_an_exact_match(memorizing_model, small_tokenizer):
    model, canaries, n = memorizing_model
    tok, window = small_tokenizer, 20
    prefix = n - window - 8  # the truth runs 8 tokens past the window (re-tokenization at its end)
    kwargs = dict(prefix_lengths=(prefix,), window=window, frequency_penalty=0.0)
    before = measure_memorization(model, tok, canaries[:1], **kwargs)["records"][0]
    assert before["exact"] and before["matching_tokens"] == window  # the model continues the canary
    handle = _prefer_eos(model, tok, lambda ids: torch.ones_like(ids, dtype=torch.bool))
    try:
        rec = measure_memorization(model, tok, canaries[:1], **kwargs)["records"][0]
    finally:
        handle.remove()
    # greedy decoding ends the text right after the prompt: nothing generated, nothing matches (was: 20, exact)
    assert rec["matching_tokens"] == 0 and not rec["exact"] and rec["bleu"] == 0.0


def test_rows_of_a_batch_that_end_early_score_as_one_at_a_time(memorizing_model, small_tokenizer):
    """One probe ends after a few tokens (EOS is preferred once its continuation reaches a token only it has), the
    other runs to the end; the batched records equal the records of the probes one at a time."""
    model, canaries, n = memorizing_model
    tok, window = small_tokenizer, 20
    prefix = n - window - 8  # the truth runs 8 tokens past the window (re-tokenization at its end)
    ids0 = tok(canaries[0].text, add_special_tokens=False)["input_ids"]
    ids1 = set(tok(canaries[1].text, add_special_tokens=False)["input_ids"])
    stop_at = next(t for t in ids0[prefix + 3 :] if t not in ids1)  # in canary 0's continuation, not in canary 1
    handle = _prefer_eos(model, tok, lambda ids: ids == stop_at)
    kwargs = dict(prefix_lengths=(prefix,), window=window, frequency_penalty=0.0)
    try:
        batched = measure_memorization(model, tok, canaries, batch_size=2, **kwargs)["records"]
        single = measure_memorization(model, tok, canaries, batch_size=1, **kwargs)["records"]
    finally:
        handle.remove()
    assert batched == single
    by_id = {r["canary_id"]: r for r in batched}
    assert 1 <= by_id["c0"]["matching_tokens"] < window and not by_id["c0"]["exact"]  # ended after a few tokens
    assert by_id["c1"]["exact"]  # ran on to the full window
