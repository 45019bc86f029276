"""Audit hi27: a GLUE-style `label` column is refused with the rename that fixes it."""

import pytest
import torch

from hf_ext.hyperinf import InfluenceEstimator


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
