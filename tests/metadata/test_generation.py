"""Classifier-free metadata guidance through transformers' generate()."""

import pytest
import torch

from hf_ext.metadata import (
    CONTEXT_BEGIN,
    CONTEXT_END,
    MetadataCollator,
    build_guidance_inputs,
    generate_with_metadata_guidance,
    metadata_template,
)

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def trained(synthetic_setup):
    """A tiny Llama trained briefly on the synthetic corpus with host context (10% dropout)."""
    ds, vocab, tok = synthetic_setup
    torch.manual_seed(0)
    model = tiny_llama(len(tok), hidden=64)
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.15, padding_side="right")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rows = [dict(r) for r in ds]
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(150):
        idx = torch.randint(len(rows), (16,), generator=g).tolist()
        batch = collator([rows[i] for i in idx])
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return model, tok, vocab


def manual_cfg_greedy(model, cond, uncond, scale, steps, blocked):
    cond, uncond, out = list(cond), list(uncond), []
    for _ in range(steps):
        with torch.no_grad():
            lc = torch.log_softmax(model(torch.tensor([cond])).logits[0, -1], -1)
            lu = torch.log_softmax(model(torch.tensor([uncond])).logits[0, -1], -1)
        scores = lu + scale * (lc - lu)
        scores[blocked] = -float("inf")
        nxt = int(torch.argmax(scores))
        out.append(nxt)
        cond.append(nxt)
        uncond.append(nxt)
    return out


def test_scale_one_equals_plain_generate(trained):
    model, tok, _ = trained
    prompts, meta = ["the", "a longer prompt here"], ["sitea.example.org", "siteb.example.org"]
    inputs = build_guidance_inputs(tok, prompts, meta)
    blocked = sorted({tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])})
    plain = model.generate(
        input_ids=inputs["input_ids"],
        attention_mask=inputs["attention_mask"],
        max_new_tokens=8,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        suppress_tokens=blocked,
    )
    guided = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=1.0, max_new_tokens=8, do_sample=False, return_text=False
    )
    assert torch.equal(plain, guided)
    texts = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=1.0, max_new_tokens=8, do_sample=False
    )
    assert texts == tok.batch_decode(plain[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def test_batched_guidance_matches_a_manual_cfg_loop(trained):
    model, tok, vocab = trained
    words = sorted(vocab["sitea"])[:2]
    prompts, meta = [words[0], f"{words[1]} {words[0]} {words[1]}"], ["siteb.example.org", "sitec.example.org"]
    scale = 2.5
    out = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=6, do_sample=False, return_text=False
    )
    inputs = build_guidance_inputs(tok, prompts, meta)
    prompt_len = inputs["input_ids"].shape[1]
    for i in range(len(prompts)):
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        blocked = [tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])]
        assert out[i, prompt_len:].tolist() == manual_cfg_greedy(model, cond, uncond, scale, 6, blocked)


def test_guidance_raises_log_probability_of_a_metadata_token(trained):
    model, tok, vocab = trained
    inputs = build_guidance_inputs(tok, [""], ["sitea.example.org"])
    with torch.no_grad():
        lc = torch.log_softmax(model(input_ids=inputs["input_ids"]).logits[0, -1], -1)
        lu = torch.log_softmax(model(input_ids=inputs["negative_prompt_ids"]).logits[0, -1], -1)
    encoded = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in vocab["sitea"]]
    assert all(len(e) == 1 for e in encoded)  # each domain word is one token
    a_ids = [e[0] for e in encoded]
    token = max(a_ids, key=lambda i: float(lc[i] - lu[i]))  # the A word the context helps most
    assert lc[token] > lu[token]

    def processed_logprob(scale):
        out = generate_with_metadata_guidance(
            model,
            tok,
            [""],
            ["sitea.example.org"],
            guidance_scale=scale,
            max_new_tokens=1,
            do_sample=False,
            return_text=False,
            suppress_context_tokens=False,
            output_scores=True,
            return_dict_in_generate=True,
        )
        return torch.log_softmax(out.scores[0][0], -1)

    plain, guided = processed_logprob(1.0), processed_logprob(3.0)
    assert guided[token] > plain[token]
    assert torch.exp(guided[a_ids]).sum() > torch.exp(plain[a_ids]).sum()  # more mass on domain-A words


def test_several_return_sequences_expand_the_negative_prompt(trained):
    model, tok, _ = trained
    texts = generate_with_metadata_guidance(
        model,
        tok,
        ["the", "a"],
        "sitea.example.org",
        guidance_scale=2.0,
        max_new_tokens=4,
        do_sample=True,
        num_return_sequences=3,
    )
    assert len(texts) == 6


def test_generation_argument_errors(trained):
    model, tok, _ = trained
    with pytest.raises(ValueError, match="metadata"):
        generate_with_metadata_guidance(model, tok, ["a", "b"], ["x"], guidance_scale=2.0)
    with pytest.raises(ValueError, match="guidance_scale"):
        generate_with_metadata_guidance(model, tok, ["a"], ["x"], guidance_scale=0)
    with pytest.raises(ValueError, match="negative_prompt_ids"):
        generate_with_metadata_guidance(model, tok, ["a"], ["x"], negative_prompt_ids=torch.ones(1, 1))
    with pytest.raises(TypeError, match="prompts"):
        generate_with_metadata_guidance(model, tok, [], [], guidance_scale=2.0)


@pytest.mark.parametrize("layout", ["context", "meco"])
def test_generation_prefix_is_the_training_prefix_under_max_metadata_tokens(ctx_tokenizer, layout):
    """A model trained with max_metadata_tokens is prompted with exactly the prefix it was trained on; in the meco
    layout the cut keeps the closing "\\n\\n", so the document (and the prompt) never runs on from a cut URL."""
    tok = ctx_tokenizer
    url = "https://data-formats.docs.python.org/3/library/xml.sax.saxutils.html#xml.sax.saxutils.quoteattr"
    prompt, limit = "Bern is", 8
    collator = MetadataCollator(
        tok,
        metadata_template("url"),
        layout=layout,
        metadata_dropout=0.0,
        padding_side="right",
        max_metadata_tokens=limit,
    )
    batch = collator([{"text": prompt, "url": url}])
    n_prefix = int((batch["labels"][0] == -100).long().cumprod(0).sum())  # BOS + context: no loss
    trained_prefix = batch["input_ids"][0, :n_prefix].tolist()
    uncut = MetadataCollator(tok, metadata_template("url"), layout=layout, metadata_dropout=0.0)
    assert len(uncut([{"text": prompt, "url": url}])["input_ids"][0]) > n_prefix + len(prompt.split())  # URL was cut
    if layout == "meco":  # BOS + `limit` tokens ending in the separator, then the document
        separator = tok("\n\n", add_special_tokens=False)["input_ids"]
        assert len(trained_prefix) == 1 + limit and trained_prefix[-len(separator) :] == separator
        assert tok.decode(trained_prefix[1:]).startswith("URL: h")
    else:  # BOS, begin marker, `limit` metadata tokens, end marker
        assert len(trained_prefix) == 3 + limit
    model = tiny_llama(len(tok))
    out = generate_with_metadata_guidance(
        model,
        tok,
        prompt,
        url,
        guidance_scale=2.0,
        layout=layout,
        max_metadata_tokens=limit,
        max_new_tokens=1,
        do_sample=False,
        return_text=False,
    )
    body = tok(prompt, add_special_tokens=False)["input_ids"]
    assert out[0, :-1].tolist() == trained_prefix + body  # the prompt as generate() saw it, token for token


def test_generation_config_is_honoured_like_keyword_arguments(trained):
    """num_return_sequences (and suppress_tokens) given through a GenerationConfig: the negative prompt is expanded and
    the result is the same as with keyword arguments."""
    from transformers import GenerationConfig

    model, tok, _ = trained
    ce = tok.convert_tokens_to_ids(CONTEXT_END)
    settings = dict(num_return_sequences=2, do_sample=True, max_new_tokens=3, suppress_tokens=[7])
    prompts, meta = ["the", "a b"], ["sitea.example.org", "siteb.example.org"]
    runs = {}
    for how in ("config", "kwargs"):
        torch.manual_seed(0)
        kwargs = {"generation_config": GenerationConfig(**settings)} if how == "config" else settings
        runs[how] = generate_with_metadata_guidance(
            model,
            tok,
            prompts,
            meta,
            guidance_scale=2.0,
            return_text=False,
            output_scores=True,
            return_dict_in_generate=True,
            **kwargs,
        )
    assert runs["config"].sequences.shape[0] == 4
    assert torch.equal(runs["config"].sequences, runs["kwargs"].sequences)
    for scores in runs["config"].scores:  # the config's suppress_tokens and the context markers are both blocked
        assert torch.isneginf(scores[:, [7, ce]]).all()


def test_guidance_with_absolute_positions_and_prompts_of_different_lengths(ctx_tokenizer, caplog):
    """GPT-2 (learned absolute positions): transformers runs the left-padded unconditional prompts without
    position_ids, so a padded batch would be guided from shifted positions. Texts and sequences are generated prompt by
    prompt and equal a manual CFG loop on the unpadded prompts; only a dict output stays batched, with a warning."""
    import logging

    from transformers import GPT2Config, GPT2LMHeadModel

    tok = ctx_tokenizer
    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=len(tok),
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=256,
            initializer_range=0.3,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    ).eval()
    prompts, meta, scale, steps = ["a", "alpha beta gamma"], ["https://a.org"] * 2, 2.0, 6
    texts = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=steps, do_sample=False
    )
    inputs = build_guidance_inputs(tok, prompts, meta)
    assert (inputs["negative_prompt_attention_mask"] == 0).any()  # the batch is padded
    blocked = [tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])]
    for i, text in enumerate(texts):
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        tokens = manual_cfg_greedy(model, cond, uncond, scale, steps, blocked)
        if tok.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
        assert text == tok.decode(tokens, skip_special_tokens=True), i
    # Tensor output: generated prompt by prompt too, laid out as a batched call lays it out (it used to run batched,
    # from shifted positions, with a warning).
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.generation"):
        seqs = generate_with_metadata_guidance(
            model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=steps, do_sample=False, return_text=False
        )
    assert "no rotary position embeddings" not in caplog.text
    width = inputs["input_ids"].shape[1]
    assert torch.equal(seqs[:, :width], inputs["input_ids"])
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for i in range(len(prompts)):
        cond = inputs["input_ids"][i][inputs["attention_mask"][i] == 1].tolist()
        uncond = inputs["negative_prompt_ids"][i][inputs["negative_prompt_attention_mask"][i] == 1].tolist()
        tokens = manual_cfg_greedy(model, cond, uncond, scale, steps, blocked)
        if tok.eos_token_id in tokens:
            tokens = tokens[: tokens.index(tok.eos_token_id) + 1]
        new = seqs[i, width:].tolist()
        assert new[: len(tokens)] == tokens and set(new[len(tokens) :]) <= {pad}, i
    # max_length counts over the padded batch, as in a batched call: every row gets the same new tokens (one by one,
    # the short prompt used to get more, and the output was wider than max_length)
    by_length = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_length=width + 3, do_sample=False, return_text=False
    )
    assert torch.equal(by_length, seqs[:, : width + 3])
    # the continuation pad is the one a batched call uses (the tokenizer's), not the model config's
    model.generation_config.pad_token_id = next(t for t in range(len(tok)) if t not in (pad, tok.eos_token_id))
    stop = int(seqs[0, width])
    stopped = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=steps, do_sample=False, return_text=False,
        eos_token_id=stop,
    )  # fmt: skip
    assert stopped[0, width:].tolist() == [stop] + [pad] * (stopped.shape[1] - width - 1)
    # Scores and the like cannot be merged across calls: that output stays batched, with a warning.
    with caplog.at_level(logging.WARNING, logger="hf_ext.metadata.generation"):
        generate_with_metadata_guidance(
            model, tok, prompts, meta, guidance_scale=scale, max_new_tokens=2, do_sample=False, return_text=False,
            return_dict_in_generate=True,
        )  # fmt: skip
    assert "no rotary position embeddings" in caplog.text


def test_guidance_scale_one_ignores_guidance_in_the_models_own_generation_config(ctx_tokenizer):
    """A model whose generation_config carries a guidance_scale (as loaded from a generation_config.json): with
    guidance_scale=1 the call is still plain conditional generation (before, transformers applied the stored scale
    with the last prompt token as the unconditional branch)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, build_guidance_inputs, generate_with_metadata_guidance

    tok = ctx_tokenizer
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=2, num_key_value_heads=2)
    ).eval()  # fmt: skip
    with torch.no_grad():
        model.lm_head.weight.mul_(20)  # peaked next-token distributions, so that guidance changes the argmax
    prompts, meta = ["the river flows"], ["https://a.org/x"]
    inputs = build_guidance_inputs(tok, prompts, meta)
    blocked = sorted({tok.bos_token_id, *tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])})
    cond, steps = inputs["input_ids"][0].tolist(), []
    for _ in range(6):  # greedy decoding by hand, conditional only
        with torch.no_grad():
            logits = model(torch.tensor([cond])).logits[0, -1]
        logits[blocked] = -float("inf")
        steps.append(int(logits.argmax()))
        cond.append(steps[-1])
    model.generation_config.guidance_scale = 3.0
    out = generate_with_metadata_guidance(
        model, tok, prompts, meta, guidance_scale=1.0, max_new_tokens=6, do_sample=False, return_text=False
    )
    assert out[0, inputs["input_ids"].shape[1] :].tolist() == steps
    from transformers import GenerationConfig

    for passed in (
        GenerationConfig(max_new_tokens=6, do_sample=False),
        GenerationConfig(max_new_tokens=6, guidance_scale=2.0),
    ):
        out = generate_with_metadata_guidance(
            model, tok, prompts, meta, guidance_scale=1.0, generation_config=passed, return_text=False
        )
        assert out[0, inputs["input_ids"].shape[1] :].tolist() == steps  # generate() filled None from the model's 3.0
    assert model.generation_config.guidance_scale == 3.0  # the model's config is not modified
