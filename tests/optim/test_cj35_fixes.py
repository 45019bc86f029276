"""cj35 F1: peft's trainable token rows (`LoraConfig(trainable_token_indices=...)`, the way docs/metadata.md trains the
context markers' new embedding rows) are embedding rows, kept out of the rotational set like `nn.Embedding` weights.
They used to be rotational (a 2-dim decayed tensor that is not an `nn.Embedding` weight), so LionAR kept each row's
initial norm and only rotated it."""

import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.optim import LionAR, rotational_param_groups


def _model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], trainable_token_indices={"embed_tokens": [3, 5]})
    model = get_peft_model(LlamaForCausalLM(cfg), lora)
    delta = next(p for n, p in model.named_parameters() if "trainable_tokens_delta" in n)
    return model, delta


def test_trainable_token_rows_are_plain_unless_embeddings_are_rotational():
    model, delta = _model()
    groups = rotational_param_groups(model, 1.0)
    rotational = [p for g in groups if g["rotational"] for p in g["params"]]
    assert not any(p is delta for p in rotational)
    assert any(p is delta for g in groups if not g["rotational"] for p in g["params"])
    assert any(
        "lora_A" in n for n, p in model.named_parameters() if any(p is q for q in rotational)
    )  # LoRA A still is
    opted_in = rotational_param_groups(model, 1.0, rotational_embeddings=True)
    assert any(p is delta for g in opted_in if g["rotational"] for p in g["params"])


def test_lion_ar_changes_the_norm_of_trainable_token_rows():
    model, delta = _model()
    before = delta.detach().norm(dim=1).clone()
    opt = LionAR(model, lr=0.05, weight_decay=1.0)
    ids = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(1))
    ids[:, ::2] = 3  # the trainable tokens appear, so their rows get a gradient
    ids[:, 1::4] = 5
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    # plain Lion moves every row by lr per coordinate; a rotation would have kept each row's norm exactly
    assert (delta.detach().norm(dim=1) - before).abs().min() > 1e-3
