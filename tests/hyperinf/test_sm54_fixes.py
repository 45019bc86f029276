"""Audit pass 43 (sm54): HyperINF on a model whose block linears run in FP8 (`hf_ext.fp8.convert`, emulated backend)
with LoRA adapters on them. Checked, no defect: the per-example gradients are those of the FP8 forward and backward
(not of a float path), scoring leaves the delayed-scaling state (amax history) as training left it, and the vmap
attempt falls back to one backward pass per example with a warning (the FP8 autograd Function has no vmap rule), with
the same scores. Pinned here; docs/hyperinf.md, "FP8 models"."""

import copy
import warnings

import pytest
import torch

from hf_ext.fp8 import convert
from hf_ext.hyperinf import InfluenceEstimator, PerExampleGradients, tracked_lora_parameters
from hf_ext.hyperinf.gradients import to_rank_first


def _model(fp8: bool, scaling: str = "delayed"):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, max_position_embeddings=64)  # fmt: skip
    model = LlamaForCausalLM(cfg)
    if fp8:
        convert(model, backend="emulated", scaling=scaling)
    torch.manual_seed(1)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    if fp8 and scaling == "delayed":  # one training step: the amax history is that of training, not zeros
        peft_model.train()
        x = torch.randint(0, 64, (4, 12), generator=torch.Generator().manual_seed(2))
        peft_model(input_ids=x, labels=x).loss.backward()
        peft_model.zero_grad()
    return peft_model


def _data(n, seed):
    gen = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(0, 64, (10,), generator=gen).tolist()} for _ in range(n)]


def _fp8_state(model):
    return {name: b.clone() for name, b in model.named_buffers() if "fp8" in name}


@pytest.mark.parametrize("scaling", ["delayed", "current"])
def test_per_example_gradients_are_the_fp8_backwards(scaling):
    model = _model(True, scaling)
    from hf_ext.fp8.emulation import Fp8Linear

    base = model.base_model.model.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(base, Fp8Linear)
    tracked = tracked_lora_parameters(model)
    data = _data(3, 3)
    (batch,) = list(PerExampleGradients(model, tracked, batch_size=4, method="loop").iterate(data))
    params = dict(model.named_parameters())
    model.eval()
    for i, example in enumerate(data):
        x = torch.tensor([example["input_ids"]])
        loss = model(input_ids=x, labels=x).loss  # the FP8 forward; its backward runs the FP8 dgrad / wgrad GEMMs
        grads = torch.autograd.grad(loss, [params[m.name] for m in tracked])
        for m, g in zip(tracked, grads):
            torch.testing.assert_close(batch[m.name][i], to_rank_first(g[None], m)[0], rtol=1e-5, atol=1e-7)
    # not the float model's gradients: the same weights without FP8 give others
    plain = _model(False)
    (float_batch,) = list(PerExampleGradients(plain, tracked_lora_parameters(plain), 4, "loop").iterate(data))
    first = tracked[0].name
    assert not torch.allclose(batch[first], float_batch[first], rtol=1e-3, atol=1e-6)


def test_fit_and_scores_leave_the_fp8_scaling_state_and_match_the_loop():
    model = _model(True)
    before = _fp8_state(model)
    assert any(bool(b.abs().sum() > 0) for b in before.values())  # the history holds the training step's amaxes
    train, evaluation = _data(5, 4), _data(2, 5)
    with pytest.warns(UserWarning, match="cannot run under torch.func.vmap"):
        scores = InfluenceEstimator(model, method="hyperinf").fit(train).scores(evaluation)
    after = _fp8_state(model)
    assert all(torch.equal(before[name], after[name]) for name in before)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "loop" skips the vmap attempt
        loop = InfluenceEstimator(copy.deepcopy(model), method="hyperinf", per_example_gradients="loop")
        again = loop.fit(train).scores(evaluation)
    assert scores.shape == (5,) and torch.isfinite(torch.as_tensor(scores)).all()
    torch.testing.assert_close(torch.as_tensor(scores), torch.as_tensor(again), rtol=1e-6, atol=1e-8)
