"""Mutation-testing kills (mu41) for the pass-35 NeuralGrok amplifier dtype change."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from hf_ext.neuralgrok import NeuralAmplifier


def test_an_amplifier_file_of_mixed_dtypes_is_refused(tmp_path):
    """An amplifier has one dtype: a file whose tensors mix float32 and float64 (hand-edited) is refused by name, not
    loaded in whichever dtype the first cast picked."""
    NeuralAmplifier((8, 8), c=0.5).save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    tensors = load_file(path)
    first = sorted(tensors)[0]
    tensors[first] = tensors[first].to(torch.float64)
    save_file(tensors, path)
    with pytest.raises(ValueError, match="holds amplifier tensors of several dtypes"):
        NeuralAmplifier.from_pretrained(tmp_path)
