"""cj35 F1: peft's trainable token rows (`LoraConfig(trainable_token_indices=...)`, the way docs/metadata.md trains the
context markers' new embedding rows) are embedding rows, kept out of the rotational set like `nn.Embedding` weights.
They used to be rotational (a 2-dim decayed tensor that is not an `nn.Embedding` weight), so LionAR kept each row's
initial norm and only rotated it."""

import pytest
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


# cj35 F2: UpdateMetricsCallback on a LoRA model. peft's `lora_B` starts at zero, so its relative representation
# change divided by the 1e-300 floor (update/rrc about 1e299 at the first step) and its rows counted as 90° angles.


def test_zero_weights_have_no_angle_and_no_relative_representation_change():
    import math

    from hf_ext.optim import angular_update, relative_representation_change

    old = torch.tensor([[0.0, 0.0], [1.0, 0.0]], dtype=torch.float64)
    new = torch.tensor([[0.1, 0.0], [1.0, 1.0]], dtype=torch.float64)
    angles = angular_update(old, new)
    assert math.isnan(angles[0]) and angles[1].item() == pytest.approx(math.pi / 4)
    x = torch.randn(3, 2, dtype=torch.float64)
    assert math.isnan(relative_representation_change(x, torch.zeros(4, 2), torch.ones(4, 2)))


def test_update_metrics_of_a_lora_model_leave_the_zero_lora_b_out(tmp_path):
    import math

    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from hf_ext.optim import UpdateMetricsCallback, angular_update, relative_representation_change

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=2, max_position_embeddings=16)  # fmt: skip
    model = get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    ids = torch.randint(0, 32, (4, 8), generator=torch.Generator().manual_seed(1))
    probe = {"input_ids": ids[:2]}
    recorded = {}

    class Recorder(UpdateMetricsCallback):  # the weights and probe inputs before the first step, to recompute from
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            super().on_pre_optimizer_step(args, state, control, model=model, **kwargs)
            if state.global_step == 0:
                recorded.update(self._snap)

    cb = Recorder(probe_batch=probe, plot_path=None)
    args = TrainingArguments(str(tmp_path), max_steps=1, per_device_train_batch_size=4, learning_rate=1e-2,
                             report_to="none", use_cpu=True, disable_tqdm=True, save_strategy="no")  # fmt: skip
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    Trainer(model=model, args=args, train_dataset=data, callbacks=[cb]).train()
    row = cb.history[0]
    lora_a = [(n, m) for n, m in model.named_modules() if n.endswith("lora_A.default")]
    assert lora_a and row["update/rrc"] < 1.0  # was ~1e299
    # since op52 a LoRA layer's representation is that of the adapted layer (base + scaling * B @ A), not that of its
    # factors (tests/optim/test_op52_fixes.py)
    layers = [m for n, m in model.named_modules() if n.endswith(("q_proj", "v_proj"))]

    def effective(m, values=None):  # base + scaling * B @ A, from the copies before the step where `values` is given
        a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
        if values is not None:
            a, b = values[id(a)], values[id(b)]
        return m.base_layer.weight.double() + m.scaling["default"] * b.double() @ a.double()

    expected_rrc = sum(
        relative_representation_change(recorded["inputs"][id(m)], effective(m, recorded["weights"]), effective(m))
        for m in layers
    ) / len(layers)
    assert row["update/rrc"] == pytest.approx(expected_rrc, rel=1e-9)
    expected_angle = torch.cat([angular_update(recorded["weights"][id(m.weight)], m.weight) for _, m in lora_a]).mean()
    assert not math.isnan(row["update/angle"]) and row["update/angle"] == pytest.approx(
        float(expected_angle), rel=1e-9
    )
