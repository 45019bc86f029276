"""uj18 F2: `GrokDecoderForCausalLM` is registered as a causal LM but had no `generate` (it did not derive from
`GenerationMixin`), so peft's `task_type="CAUSAL_LM"` failed ("no attribute 'prepare_inputs_for_generation'") and
`AutoPeftModelForCausalLM` could not load its adapters. It now generates without a KV cache (each step runs the
whole sequence), honours `attention_mask` (left/right padding), and works with peft's causal-LM task type."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM

from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM

VOCAB = 24
PAD = 0  # never in the prompts below (ids from 1)


def _model(**kw):
    torch.manual_seed(0)
    cfg = dict(
        vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16
    )
    cfg.update(kw)
    return GrokDecoderForCausalLM(GrokDecoderConfig(**cfg)).eval()


def _prompts(n=3, length=5, seed=1):
    return torch.randint(1, VOCAB, (n, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def _greedy(model, ids, steps):
    for _ in range(steps):
        ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids


def test_can_generate_and_greedy_equals_a_brute_force_loop():
    model, ids = _model(), _prompts()
    assert GrokDecoderForCausalLM.can_generate() and model.generation_config.use_cache is False
    expected = _greedy(model, ids, 7)
    assert torch.equal(model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=PAD), expected)
    # a generation config that asks for a cache (an older folder, or the caller) still runs the whole sequence
    out = model.generate(ids, max_new_tokens=7, do_sample=False, pad_token_id=PAD, use_cache=True)
    assert torch.equal(out, expected)


def test_generate_after_reload_and_from_a_folder_without_generation_config(tmp_path):
    model, ids = _model(tie_word_embeddings=True), _prompts()
    expected = _greedy(model, ids, 5)
    model.save_pretrained(tmp_path)
    assert torch.equal(
        AutoModelForCausalLM.from_pretrained(tmp_path).generate(ids, max_new_tokens=5, pad_token_id=PAD), expected
    )
    os.remove(tmp_path / "generation_config.json")
    old = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(old.generate(ids, max_new_tokens=5, pad_token_id=PAD), expected)


def test_beam_search_scores_are_those_of_the_returned_sequences():
    model, ids = _model(), _prompts(n=2)
    out = model.generate(
        ids,
        max_new_tokens=4,
        num_beams=3,
        length_penalty=0.0,
        do_sample=False,
        pad_token_id=PAD,
        return_dict_in_generate=True,
        output_scores=True,
    )
    with torch.no_grad():
        logp = model(out.sequences).logits.double().log_softmax(-1)
    new = out.sequences[:, ids.shape[1] :]
    steps = logp[:, ids.shape[1] - 1 : -1].gather(-1, new[..., None])[..., 0].sum(-1)
    torch.testing.assert_close(out.sequences_scores.double(), steps, rtol=1e-5, atol=1e-5)


def test_attention_mask_padding_gives_the_sequence_alone():
    model = _model()
    seqs = [_prompts(1, n, seed=n)[0] for n in (7, 4, 2)]
    length = 7
    with torch.no_grad():
        alone = [model(s[None]).logits[0] for s in seqs]
        ids = _prompts(2, length)
        # an all-ones mask is the unmasked model, bit for bit
        assert torch.equal(model(ids, attention_mask=torch.ones_like(ids)).logits, model(ids).logits)
        for side in ("left", "right"):
            ids = torch.full((3, length), PAD)
            mask = torch.zeros_like(ids)
            for i, s in enumerate(seqs):
                cols = slice(length - len(s), length) if side == "left" else slice(0, len(s))
                ids[i, cols], mask[i, cols] = s, 1
            logits = model(ids, attention_mask=mask).logits
            assert torch.isfinite(logits).all()
            for i in range(len(seqs)):
                real = mask[i].bool()
                torch.testing.assert_close(logits[i][real], alone[i], rtol=1e-5, atol=1e-5)
    # batched generate with left padding: each row continues its prompt as alone
    ids = torch.full((3, length), PAD)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, length - len(s) :], mask[i, length - len(s) :] = s, 1
    out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
    for i, s in enumerate(seqs):
        assert out[i, length:].tolist() == _greedy(model, s[None], 5)[0, len(s) :].tolist()


def test_inputs_embeds_forward_and_refusals():
    model, ids = _model(), _prompts()
    with torch.no_grad():
        embeds = model.get_input_embeddings()(ids)
        assert torch.equal(model(inputs_embeds=embeds).logits, model(ids).logits)
    with pytest.raises(ValueError, match="exactly one of `input_ids` and `inputs_embeds`"):
        model(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, seq_len\)"):
        model(ids, attention_mask=torch.ones(3, 1, 5, 5))
    with pytest.raises(ValueError, match="generate needs `input_ids`: without a KV cache"):
        model.prepare_inputs_for_generation(ids, inputs_embeds=embeds)
    with pytest.raises(ValueError, match="has no KV cache, but generate got `cache`"):
        model.prepare_inputs_for_generation(ids, cache=object())
    with pytest.raises(ValueError, match="exceeds max_position_embeddings=16"):
        model.generate(ids, max_new_tokens=13, pad_token_id=PAD)  # 5 + 12 tokens run: 17 > 16


def test_peft_causal_lm_task_type_trains_generates_and_reloads(tmp_path):
    peft = pytest.importorskip("peft")
    _model().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    config = peft.LoraConfig(r=2, target_modules=["mlp.0", "mlp.2"], task_type="CAUSAL_LM", init_lora_weights=False)
    model = peft.get_peft_model(base, config)
    assert isinstance(model, peft.PeftModelForCausalLM)
    ids = _prompts()
    model(input_ids=ids, labels=ids).loss.backward()
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    assert lora and all(p.grad is not None and p.grad.abs().sum() > 0 for p in lora)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    out = model.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=PAD)
    model.save_pretrained(tmp_path / "adapter")
    merged = model.merge_and_unload()
    assert torch.equal(out, _greedy(merged, ids, 5))

    reloaded = peft.AutoPeftModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, logits, rtol=0, atol=1e-6)
    assert torch.equal(reloaded.generate(input_ids=ids, max_new_tokens=5, do_sample=False, pad_token_id=PAD), out)
