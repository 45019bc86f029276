"""`--task classification` on a base whose type has no sequence-classification class (FOG, the layer-paired model:
both are causal LMs only) is refused before any data is prepared or output written, naming the flag and the task that
works with it. It failed after data preparation with transformers' "Unrecognized configuration class" list."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.recipes.hyperinf import main

from .test_recipe_audit import TINY

# the tiny run's flags without those describing the base pretrained here (refused with --model_name_or_path)
FLAGS = [a for i, a in enumerate(TINY) if not {a, TINY[i - 1] if i else ""} & {"--pretrain_steps", "--hidden_size"}]
SHAPE = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def test_a_fog_base_is_refused_for_classification_up_front(tmp_path):
    torch.manual_seed(0)
    FogForCausalLM(FogConfig(**SHAPE)).save_pretrained(tmp_path / "fog")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"--model_name_or_path=.*'fog' model.*--task llm_selection"):
        main([*FLAGS, "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "fog")])
    assert not out.exists()


def test_a_layer_paired_base_is_refused_for_classification_up_front(tmp_path):
    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    torch.manual_seed(0)
    source = LlamaForCausalLM(LlamaConfig(**SHAPE, num_key_value_heads=4))
    convert_to_layer_parallel(source, pairs=[[0, 1]]).save_pretrained(tmp_path / "lp")
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=r"'layer_parallel' model.*--task llm_selection"):
        main([*FLAGS, "--output_dir", str(out), "--model_name_or_path", str(tmp_path / "lp")])
    assert not out.exists()
