"""Helpers shared by the tests of FOG's weight-decay grouping under hf_ext's Trainers (tests/fog, tests/neuralgrok):
a tiny FOG model, a token dataset of its vocabulary and the optimizer's decay groups by parameter name. Test files
import them with `from ..fog_decay_helpers import ...` (the suite runs with `--import-mode=importlib`)."""

from __future__ import annotations

import torch
from datasets import Dataset

from hf_ext.models.fog import FogConfig, FogForCausalLM

VOCAB = 64


def tiny_fog(seed: int = 0) -> FogForCausalLM:
    torch.manual_seed(seed)
    config = FogConfig.fog(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        swiglu_intermediate_size=64,
        max_position_embeddings=64,
    )
    return FogForCausalLM(config)


def token_dataset(rows: int = 8, length: int = 12) -> Dataset:
    ids = torch.randint(0, VOCAB, (rows, length), generator=torch.Generator().manual_seed(1)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids, "attention_mask": [[1] * length] * rows})


def decay_groups(trainer) -> dict[float, set[str]]:
    """The trainer's optimizer groups as {weight_decay: parameter names} (builds the optimizer)."""
    trainer.create_optimizer()
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    out: dict[float, set[str]] = {}
    for group in trainer.optimizer.param_groups:
        out.setdefault(group["weight_decay"], set()).update(names[id(p)] for p in group["params"])
    return out
