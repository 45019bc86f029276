"""A peft model handed to the evaluation helpers is refused with the fix (merge the adapter), not only its type."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from hf_ext.evaluation import evaluate_model, save_for_lm_eval

pytest.importorskip("lm_eval")


def _peft():
    torch.manual_seed(0)
    base = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2))  # fmt: skip
    return get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))


def test_evaluate_model_names_merge_and_unload(small_tokenizer):
    with pytest.raises(TypeError, match=r"merge_and_unload\(\)"):
        evaluate_model(_peft(), small_tokenizer, tasks=["hf_ext_cloze"], limit=1)


def test_save_for_lm_eval_names_merge_and_unload(small_tokenizer, tmp_path):
    with pytest.raises(TypeError, match=r"merge_and_unload\(\)"):
        save_for_lm_eval(_peft(), small_tokenizer, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
