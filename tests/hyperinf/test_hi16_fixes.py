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
from hf_ext.hyperinf.gradients import PaddingCollator

_CONFIG = dict(vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
               num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0)  # fmt: skip


def _causal_lm():
    torch.manual_seed(0)
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    return get_peft_model(LlamaForCausalLM(LlamaConfig(**_CONFIG)).double(), lora).eval()


def _ids(count, length, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 50, (length,), generator=gen).tolist() for _ in range(count)]


def _mixed_train():
    """Six examples of one length (one chunk at batch_size=8): unlabelled ones and ones with their prompt masked."""
    ids = _ids(6, 6, 0)
    return [
        {"input_ids": x} if i % 3 == 0 else {"input_ids": x, "labels": [-100, -100, -100] + x[3:]}
        for i, x in enumerate(ids)
    ]


# 1. ------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["unlabelled_first", "labelled_first"])
def test_mixed_causal_lm_labels_give_the_same_scores_whatever_the_batch_size(order):
    model = _causal_lm()
    train = _mixed_train()
    if order == "labelled_first":
        train = train[1:] + train[:1]
    val = [{"input_ids": x} for x in _ids(3, 6, 1)]

    def scores(batch_size, data):
        est = InfluenceEstimator(model, "exact", batch_size=batch_size, dtype=torch.float64)
        return est.fit(data).scores(val)

    one = scores(1, train)
    eight = scores(8, train)
    np.testing.assert_allclose(eight, one, rtol=1e-9, atol=1e-12 * np.abs(one).max())
    # the labels of an example are its own: the same example with labels = input_ids written out scores the same
    explicit = [ex if "labels" in ex else {**ex, "labels": list(ex["input_ids"])} for ex in train]
    np.testing.assert_allclose(scores(8, explicit), one, rtol=1e-9, atol=1e-12 * np.abs(one).max())
    # and the prompt masks count: labelling every example with its input_ids gives other scores
    unmasked = [{"input_ids": ex["input_ids"]} for ex in train]
    assert not np.allclose(scores(8, unmasked), one, rtol=1e-3)


def test_causal_lm_labels_none_in_a_datasets_dataset_are_built_per_example():
    """`Dataset.from_list` fills a missing `labels` with None (labelled example first): same scores as the list."""
    from datasets import Dataset

    model = _causal_lm()
    train = _mixed_train()
    train = train[1:] + train[:1]
    val = [{"input_ids": x} for x in _ids(2, 6, 1)]
    dataset = Dataset.from_list(train)
    assert dataset[len(train) - 1]["labels"] is None
    want = InfluenceEstimator(model, "tracin", batch_size=1, dtype=torch.float64).fit(train).scores(val)
    got = InfluenceEstimator(model, "tracin", batch_size=8, dtype=torch.float64).fit(dataset).scores(val)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("batch_size", [1, 8])
def test_examples_with_different_model_inputs_are_refused_naming_the_example_and_the_column(batch_size):
    """Whatever the batch size (the refusal does not depend on how the examples fall into chunks)."""
    model = _causal_lm()
    ids = _ids(4, 6, 0)
    train = [{"input_ids": x} for x in ids]
    train[2]["position_ids"] = list(range(6))
    est = InfluenceEstimator(model, "tracin", batch_size=batch_size)
    with pytest.raises(ValueError, match=r"example 2 has a `position_ids` column and example 0 has none.*"
                                         r"Give every example a `position_ids`, or none"):  # fmt: skip
        est.fit(train)
    train = [{"input_ids": x, "position_ids": list(range(6))} for x in ids]
    train[3]["position_ids"] = None
    with pytest.raises(ValueError, match=r"example 0 has a `position_ids` column and example 3 has none"):
        InfluenceEstimator(model, "tracin", batch_size=batch_size).fit(train)


def test_an_example_without_attention_mask_among_others_with_one_attends_to_all_its_tokens():
    """The model's own default: the same scores as without any mask, whatever the batch size (a chunk used to take
    the mask of its first example or fail with a KeyError)."""
    model = _causal_lm()
    plain = [{"input_ids": x} for x in _ids(5, 6, 0)]
    val = [{"input_ids": x} for x in _ids(2, 6, 1)]
    want = InfluenceEstimator(model, "tracin", batch_size=1, dtype=torch.float64).fit(plain).scores(val)
    for mixed in ([{**ex, "attention_mask": [1] * 6} if i % 2 else ex for i, ex in enumerate(plain)],
                  [{**ex, "attention_mask": [1] * 6} if i % 2 == 0 else ex for i, ex in enumerate(plain)]):  # fmt: skip
        got = InfluenceEstimator(model, "tracin", batch_size=8, dtype=torch.float64).fit(mixed).scores(val)
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())


def test_padding_collator_builds_causal_labels_per_example_and_refuses_mixed_columns():
    examples = [{"input_ids": [5, 6, 7], "attention_mask": [0, 1, 1]},
                {"input_ids": [1, 2, 3, 4], "attention_mask": [1, 1, 1, 1], "labels": [-100, -100, 3, 4]}]  # fmt: skip
    batch = PaddingCollator(("input_ids", "attention_mask", "labels"), causal_lm_labels=True)(examples)
    assert batch["labels"].tolist() == [[-100, 6, 7, -100], [-100, -100, 3, 4]]
    batch = PaddingCollator(("input_ids", "attention_mask", "labels"), causal_lm_labels=True)(examples[::-1])
    assert batch["labels"].tolist() == [[-100, -100, 3, 4], [-100, 6, 7, -100]]
    with pytest.raises(ValueError, match=r"example 1 of the batch has a `labels` column and example 0 of the batch"):
        PaddingCollator(("input_ids", "attention_mask", "labels"))(examples)
    examples = [{"input_ids": [5, 6, 7]}, {"input_ids": [1, 2], "attention_mask": [1, 1]}]
    batch = PaddingCollator(("input_ids", "attention_mask"))(examples)
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


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
