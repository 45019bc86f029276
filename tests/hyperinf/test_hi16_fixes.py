"""Audit hi16: input and API edges of the influence estimator.

1. A list-of-dicts dataset was batched with the columns of each chunk's first example: a causal-LM example without
   `labels` first in a chunk had `labels` rebuilt from `input_ids` for the whole chunk (the -100 prompt masks of the
   others ignored, so scores depended on `batch_size`); the other order failed with a bare `KeyError: 'labels'`.
2. With several active adapters only the first was tracked, without a word.
3. `exact_gfim_hvp` / `exact_fim_hvp` accepted a negative damping, a NaN `v` and a `v` of the wrong shape.
"""

import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.hyperinf import (
    InfluenceEstimator,
    exact_fim_hvp,
    exact_gfim_hvp,
    fim,
    gfim,
    influence_from_gradients,
)

_CONFIG = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)  # fmt: skip



def _ids(count, length, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (length,), generator=gen).tolist() for _ in range(count)]



# 2. ------------------------------------------------------------------------------------------------------------------


def _two_adapter_model():
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(**_CONFIG)).double()
    model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False), "task1")
    model.add_adapter("task2", LoraConfig(r=2, target_modules=["v_proj"], init_lora_weights=False))
    model.base_model.set_adapter(["task1", "task2"])
    return model.double().eval()


def test_several_active_adapters_without_adapter_name_are_refused():
    model = _two_adapter_model()
    assert sorted(model.active_adapters) == ["task1", "task2"]
    with pytest.raises(ValueError, match=r"several active adapters \['task1', 'task2'\].*Pass `adapter_name`"):
        InfluenceEstimator(model, "hyperinf")


def _adapter_gradients(model, adapter, examples):
    """One backward per example (causal LM, labels = input_ids) with the model as it is (all its active adapters);
    gradients of `adapter`'s LoRA matrices in the rank-first layout (lora_B transposed)."""
    params = {n: p for n, p in model.named_parameters() if f".{adapter}." in n and "lora_" in n}
    out = {name: [] for name in params}
    for example in examples:
        model.zero_grad()
        ids = torch.tensor([example["input_ids"]])
        model(input_ids=ids, labels=ids).loss.backward()
        for name, param in params.items():
            out[name].append(param.grad.T if "lora_B" in name else param.grad.clone())
    model.zero_grad()
    return {name: torch.stack(values) for name, values in out.items()}


@pytest.mark.parametrize(("method", "per_example", "tol"), [("exact", "loop", 1e-9), ("tracin", "vmap", 1e-5)])
def test_adapter_name_with_several_active_adapters_attributes_through_that_adapter_only(method, per_example, tol):
    """The other active adapter enters the forward as fixed: scores equal a per-example backward reference over the
    named adapter's matrices, computed with both adapters active (and differ from those with the other one off).
    `vmap` runs Llama's eager attention, whose softmax is float32 even in a float64 model: about 1e-7 off."""
    model = _two_adapter_model()
    train = [{"input_ids": x} for x in _ids(6, 6, 0)]
    val = [{"input_ids": x} for x in _ids(2, 6, 1)]
    est = InfluenceEstimator(model, method, adapter_name="task1", dtype=torch.float64, per_example_gradients=per_example)
    assert {m.name.split(".")[-2] for m in est.tracked} == {"task1"}
    got = est.fit(train).scores(val)
    reference = _adapter_gradients(model, "task1", train), _adapter_gradients(model, "task1", val)
    expected = influence_from_gradients(*reference, method=method, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got, expected, rtol=tol, atol=tol * np.abs(expected).max())
    model.base_model.set_adapter("task1")
    alone = InfluenceEstimator(model, method, dtype=torch.float64).fit(train).scores(val)
    assert not np.allclose(alone, got, rtol=1e-3)

# 3. ------------------------------------------------------------------------------------------------------------------


def _dense_problem():
    gen = torch.Generator().manual_seed(0)
    g = torch.randn(50, 2, 3, generator=gen, dtype=torch.float64) + 2.0
    v = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    return g, v


@pytest.mark.parametrize("solver", ["gfim", "fim"])
@pytest.mark.parametrize("damping", [-0.3, 0.0, math.nan, math.inf])
def test_exact_solvers_refuse_a_damping_that_is_not_finite_and_positive(solver, damping):
    g, v = _dense_problem()
    fn, matrix = (exact_gfim_hvp, gfim(g)) if solver == "gfim" else (exact_fim_hvp, fim(g))
    with pytest.raises(ValueError, match=r"`damping` must be a finite positive number"):
        fn(v, matrix, damping)


@pytest.mark.parametrize("solver", ["gfim", "fim"])
def test_exact_solvers_refuse_a_v_that_is_not_finite_or_not_2d(solver):
    g, v = _dense_problem()
    fn, matrix = (exact_gfim_hvp, gfim(g)) if solver == "gfim" else (exact_fim_hvp, fim(g))
    bad = v.clone()
    bad[0, 0] = math.nan
    with pytest.raises(ValueError, match=r"`v` holds NaN or inf"):
        fn(bad, matrix, 0.1)
    for shaped in (v.reshape(-1), v.reshape(1, 2, 3)):
        with pytest.raises(ValueError, match=r"`v` must be a non-empty rank-first `\(r, d\)` matrix"):
            fn(shaped, matrix, 0.1)
    with pytest.raises(TypeError, match=r"`v` must be a floating-point tensor"):
        fn(v.long(), matrix, 0.1)


def test_exact_solvers_refuse_a_curvature_of_the_wrong_size_or_not_finite():
    g, v = _dense_problem()
    with pytest.raises(ValueError, match=r"`gfim_matrix` must be d x d with d = v.shape\[-1\], i.e. \(2, 2\) for `v` "
                                         r"of shape \(3, 2\), got \(3, 3\) \(is `v` transposed"):  # fmt: skip
        exact_gfim_hvp(v.T.contiguous(), gfim(g), 0.1)
    with pytest.raises(ValueError, match=r"`fim_matrix` must be r d x r d, i.e. \(6, 6\).*got \(3, 3\)"):
        exact_fim_hvp(v, gfim(g), 0.1)
    with pytest.raises(ValueError, match=r"`gfim_matrix` must be a non-empty square matrix"):
        exact_gfim_hvp(v, g[0], 0.1)
    broken = gfim(g)
    broken[0, 1] = math.inf
    with pytest.raises(ValueError, match=r"`gfim_matrix` holds NaN or inf"):
        exact_gfim_hvp(v, broken, 0.1)


def test_exact_solvers_still_solve_valid_input():
    g, v = _dense_problem()
    lam = torch.tensor(0.1, dtype=torch.float64)  # a 0-dim tensor damping is accepted, as in datainf_hvp
    expected = torch.linalg.solve(fim(g) + 0.1 * torch.eye(6, dtype=torch.float64), v.reshape(-1)).reshape(2, 3)
    torch.testing.assert_close(exact_fim_hvp(v, fim(g), lam), expected)
    right = torch.linalg.solve(gfim(g) + 0.1 * torch.eye(3, dtype=torch.float64), v.T).T
    torch.testing.assert_close(exact_gfim_hvp(v, gfim(g), lam), right)
