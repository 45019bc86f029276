"""Tests that kill mutants of the mu29 mutation pass over guided generation (each fails on its mutant)."""

import torch

from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, build_guidance_inputs, generate_with_metadata_guidance


def _manual_cfg_greedy(model, cond, uncond, scale, steps, blocked, eos):
    """uncond + scale * (cond - uncond) on log-softmaxed float64 scores, two unpadded prompts, greedy."""
    cond, uncond, out = list(cond), list(uncond), []
    for _ in range(steps):
        with torch.no_grad():
            lc = torch.log_softmax(model(torch.tensor([cond])).logits[0, -1].double(), -1)
            lu = torch.log_softmax(model(torch.tensor([uncond])).logits[0, -1].double(), -1)
        scores = lu + scale * (lc - lu)
        scores[blocked] = -float("inf")
        nxt = int(torch.argmax(scores))
        out.append(nxt)
        if nxt == eos:
            break
        cond.append(nxt)
        uncond.append(nxt)
    return out


def test_per_prompt_guidance_returns_every_return_sequence_of_every_prompt(ctx_tokenizer):
    """GPT-2 (absolute positions) with prompts of different lengths is guided prompt by prompt: with
    num_return_sequences=2 each prompt gives its two texts, in prompt order, as a batched call returns them (the
    per-prompt path keeping one text per prompt would drop half of them and misalign the rest)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    tok = ctx_tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(vocab_size=len(tok), n_embd=64, n_layer=2, n_head=4, n_positions=256, initializer_range=0.3,
                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    ).eval()  # fmt: skip
    prompts, meta, scale, steps = ["a", "alpha beta gamma"], ["https://a.org", "https://b.org/x"], 2.0, 5
    inputs = build_guidance_inputs(tok, prompts, meta)
    assert (inputs["negative_prompt_attention_mask"] == 0).any()  # padded: the per-prompt path
    # top_k=1 sampling is greedy: both return sequences of a prompt are its greedy guided continuation
    texts = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=steps, do_sample=True, top_k=1,
        num_return_sequences=2,
    )  # fmt: skip
    blocked = [tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])]
    expected = []
    for i in range(len(prompts)):
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        tokens = _manual_cfg_greedy(model, cond, uncond, scale, steps, blocked, tok.eos_token_id)
        expected += [tok.decode(tokens, skip_special_tokens=True)] * 2
    assert texts == expected
