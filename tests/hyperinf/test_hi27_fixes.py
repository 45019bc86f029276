"""Audit hi27: a GLUE-style `label` column is refused with the rename that fixes it; a non-finite matrix given to
`schulz_inverse`, or a GFIM that overflows its dtype in the engine, is refused as such (both were reported as a Schulz
divergence whose fix was another start)."""

import pytest
import torch

from hf_ext.hyperinf import (
    InfluenceEstimator,
    SchulzDivergenceError,
    influence_from_gradients,
    schulz_inverse,
)


@pytest.mark.parametrize("column", ["label", "label_ids"])
def test_label_column_is_refused_with_the_rename(column):
    """A tokenized GLUE dataset keeps its class in `label` (Trainer's collators rename it to `labels`); the refusal
    said to add labels the dataset already has."""
    from peft import LoraConfig, get_peft_model
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16)
    model = get_peft_model(
        BertForSequenceClassification(config), LoraConfig(task_type="SEQ_CLS", r=2, target_modules=["query"])
    )
    rows = [{"input_ids": [1, 5, 2], column: 0}, {"input_ids": [1, 7, 9, 2], column: 1}]
    with pytest.raises(ValueError, match=rf"has a `{column}` column but no `labels`.*rename_column\('{column}'"):
        InfluenceEstimator(model).fit(rows)


@pytest.mark.parametrize("init", ["identity", "frobenius"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_schulz_inverse_refuses_a_non_finite_matrix(init, bad):
    matrix = torch.eye(3, dtype=torch.float64)
    matrix[0, 1] = matrix[1, 0] = bad
    with pytest.raises(ValueError, match="`matrix` holds NaN or inf") as info:
        schulz_inverse(matrix, init=init, tol=1e-6)
    assert not isinstance(info.value, SchulzDivergenceError)


def test_engine_names_a_gfim_overflow_in_half_precision():
    """Finite float16 gradients whose GFIM sum passes 65504: the fix is the dtype, not the Schulz start."""
    gen = torch.Generator().manual_seed(0)
    train = {"l": 30 * torch.randn(200, 4, 8, generator=gen)}
    val = {"l": torch.randn(3, 4, 8, generator=gen)}
    with pytest.raises(ValueError, match=r"layer 'l' overflowed in dtype=torch.float16.*dtype=torch.float32") as info:
        influence_from_gradients(train, val, "hyperinf", dtype=torch.float16)
    assert not isinstance(info.value, SchulzDivergenceError)
    scores = influence_from_gradients(train, val, "hyperinf")  # the default float32 is fine
    assert bool(torch.isfinite(scores).all())
