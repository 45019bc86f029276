"""The same `InfluenceEstimator` API on peft LoRA models that are not decoder-only text models (issue 23.4): a tiny
T5 encoder-decoder and a tiny LLaVA vision-language model, both built from configs (offline)."""

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    T5Config,
    T5ForConditionalGeneration,
)

from hf_ext.hyperinf import InfluenceEstimator, influence_from_gradients, tracked_lora_parameters


def randomize_lora_b(model, seed=0, std=0.2):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(std * torch.randn(param.shape, generator=gen))


def reference_gradients(model, dataset):
    """One backward per example, unpadded, every input column passed to the model; lora_B transposed."""
    model.eval()
    tracked = tracked_lora_parameters(model)
    params = dict(model.named_parameters())
    out = {m.name: [] for m in tracked}
    for example in dataset:
        model.zero_grad()
        model(**{key: torch.tensor([value]) for key, value in example.items()}).loss.backward()
        for m in tracked:
            grad = params[m.name].grad.detach().double()
            out[m.name].append((grad.T if m.kind == "lora_B" else grad).reshape(m.shape))
    model.zero_grad()
    return {name: torch.stack(values) for name, values in out.items()}


def check_against_reference(model, train, val, methods=("hyperinf", "tracin"), **kwargs):
    ref_train, ref_val = reference_gradients(model, train), reference_gradients(model, val)
    for method in methods:
        expected = influence_from_gradients(ref_train, ref_val, method=method, dtype=torch.float64).numpy()
        got = InfluenceEstimator(model, method, batch_size=4, dtype=torch.float64, **kwargs).fit(train).scores(val)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


def test_encoder_decoder_t5_lora():
    """T5 from a config with LoRA on q/v of encoder and decoder: inputs of two lengths, targets of several lengths
    (padded with -100 inside a batch); streamed vmap scores equal unpadded per-example backward passes."""
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    model = get_peft_model(
        T5ForConditionalGeneration(config), LoraConfig(r=2, lora_alpha=4, target_modules=["q", "v"])
    )
    randomize_lora_b(model)
    assert {m.name.split(".")[2] for m in tracked_lora_parameters(model)} == {"encoder", "decoder"}
    gen = torch.Generator().manual_seed(1)
    rows = [
        {"input_ids": torch.randint(2, 64, (5 + i % 2,), generator=gen).tolist(),
         "labels": torch.randint(2, 64, (3 + i % 3,), generator=gen).tolist()}
        for i in range(16)
    ]  # fmt: skip
    check_against_reference(model, rows[:12], rows[12:])


@pytest.fixture(scope="module")
def tiny_llava():
    torch.manual_seed(0)
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=16, patch_size=8
    )
    text = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, pad_token_id=0, max_position_embeddings=64,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_id=63, vision_feature_select_strategy="default",
        vision_feature_layer=-1, image_seq_length=4,
    )  # fmt: skip
    lora = LoraConfig(r=2, lora_alpha=4, target_modules=r".*language_model.*\.(q_proj|v_proj)")
    model = get_peft_model(LlavaForConditionalGeneration(config), lora)
    randomize_lora_b(model)
    return model


def llava_rows(n, seed):
    """Four image tokens (one per 8x8 patch of a 16x16 image), six text tokens; loss on the text only."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        text = torch.randint(2, 60, (6,), generator=gen).tolist()
        rows.append(
            {"input_ids": [63] * 4 + text, "labels": [-100] * 4 + text,
             "pixel_values": torch.randn(3, 16, 16, generator=gen).tolist()}
        )  # fmt: skip
    return rows


def test_vision_language_llava_lora_uses_the_images(tiny_llava):
    """LLaVA from a config, LoRA on the language model: `pixel_values` reach the model (they used to be dropped by
    the collator, so the scores ignored the images), the forward cannot be vmapped (an `.item()` check on the image
    tokens), so the default falls back to one backward per example with a warning; scores equal per-example backward
    passes with the images, and change when only the images change."""
    rows = llava_rows(12, seed=0)
    train, val = rows[:10], rows[10:]
    check_against_reference(tiny_llava, train, val, per_example_gradients="loop")
    with pytest.warns(UserWarning, match="vmap"):
        fallback = InfluenceEstimator(tiny_llava, "tracin", batch_size=4).fit(train).scores(val)
    looped = InfluenceEstimator(tiny_llava, "tracin", per_example_gradients="loop").fit(train).scores(val)
    np.testing.assert_allclose(fallback, looped, rtol=1e-4, atol=1e-6 * np.abs(looped).max())
    other_images = [{**row, "pixel_values": new["pixel_values"]} for row, new in zip(train, llava_rows(10, seed=5))]
    scores = InfluenceEstimator(tiny_llava, "hyperinf", per_example_gradients="loop").fit(train).scores(val)
    moved = InfluenceEstimator(tiny_llava, "hyperinf", per_example_gradients="loop").fit(other_images).scores(val)
    assert np.abs(scores - moved).max() > 1e-3 * np.abs(scores).max()
    with pytest.raises(ValueError, match="pixel_values"):
        bad = [{**train[0], "pixel_values": torch.zeros(3, 8, 8).tolist()}, train[1]]
        InfluenceEstimator(tiny_llava, "tracin", per_example_gradients="loop").fit(bad)


@pytest.mark.parametrize("method", ["tracin", "hyperinf"])
def test_stored_padding_does_not_change_scores_on_an_absolute_position_model(method):
    """A dataset stored padded (left or right, `attention_mask` 0 and labels -100 on the pads) gets the scores of the
    unpadded one on GPT-2, whose learned absolute positions left padding would shift (was: signs flipped, the
    ranking changed); a causal LM's labels of another length than its input_ids are refused, naming the example."""
    import warnings

    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ext.hyperinf import InfluenceEstimator

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=64, pad_token_id=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base.double(), LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)

    def example(length, prompt):
        ids = torch.randint(1, 50, (length,), generator=g).tolist()
        return {"input_ids": ids, "labels": [-100] * prompt + ids[prompt:]}

    train = [example(n, p) for n, p in [(5, 2), (7, 3), (5, 1), (6, 4), (8, 2)]]
    evals = [example(6, 2), example(5, 3)]

    def padded(data, side, length=9):
        out = []
        for e in data:
            k = length - len(e["input_ids"])
            pad = lambda v, fill, k=k: [fill] * k + v if side == "left" else v + [fill] * k  # noqa: E731
            out.append({"input_ids": pad(e["input_ids"], 0), "attention_mask": pad([1] * len(e["input_ids"]), 0),
                        "labels": pad(e["labels"], -100)})  # fmt: skip
        return out

    def scores(tr, ev):
        return InfluenceEstimator(model, method, dtype=torch.float64).fit(tr).scores(ev)

    alone = scores(train, evals)
    for side in ("left", "right"):
        np.testing.assert_allclose(scores(padded(train, side), padded(evals, side)), alone, rtol=1e-6, atol=1e-12)
    short = [dict(train[0], labels=train[0]["labels"][:3]), *train[1:]]
    with pytest.raises(ValueError, match="example 0 has 3 labels for 5 input_ids"):
        scores(short, evals)


def test_lm_head_model_classes_take_their_labels_from_input_ids():
    """`GPT2LMHeadModel` is a causal LM although its class name does not end in `ForCausalLM` (transformers' causal-LM
    auto mapping lists it): a dataset without `labels` is scored as with `labels = input_ids` (was: refused for
    having no `labels` column)."""
    import warnings

    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(base.double(), LoraConfig(r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True))
    randomize_lora_b(model, std=0.3)
    gen = torch.Generator().manual_seed(2)
    rows = [{"input_ids": torch.randint(1, 40, (4 + i % 3,), generator=gen).tolist()} for i in range(7)]
    labelled = [dict(r, labels=list(r["input_ids"])) for r in rows]
    for method in ("tracin", "hyperinf"):
        got = InfluenceEstimator(model, method, dtype=torch.float64).fit(rows[:5]).scores(rows[5:])
        want = InfluenceEstimator(model, method, dtype=torch.float64).fit(labelled[:5]).scores(labelled[5:])
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
