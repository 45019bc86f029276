"""transformers' Trainer with `label_smoothing_factor` scores hf_ext's causal LMs against the NEXT token.

The Trainer computes the smoothed loss itself and shifts the labels only for models whose class name is among
transformers' causal-LM names; `AutoModelForCausalLM.register` alone did not put ours there, so FOG, layer-parallel
and GrokDecoder models were trained to predict the current token (audit hf11 finding 1)."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments
from transformers.trainer_pt_utils import LabelSmoother

EPS = 0.1


def _llama():
    cfg = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip
    return LlamaForCausalLM(cfg)


def _fog():
    from hf_ext.models.fog import FogConfig, FogForCausalLM

    cfg = FogConfig.fog(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, swiglu_intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    return FogForCausalLM(cfg)


def _layer_parallel():
    from hf_ext.models.layer_parallel import convert_to_layer_parallel

    return convert_to_layer_parallel(_llama(), 0, 2)


def _grok():
    from hf_ext.neuralgrok import GrokDecoderConfig, GrokDecoderForCausalLM

    return GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=96, hidden_size=32, max_position_embeddings=64))


def _fog_lora():
    from peft import LoraConfig, get_peft_model

    return get_peft_model(_fog(), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))


@pytest.mark.parametrize("build", [_llama, _fog, _layer_parallel, _grok, _fog_lora],
                         ids=["llama-control", "fog", "layer_parallel", "grok_decoder", "fog-peft"])  # fmt: skip
def test_trainer_label_smoothing_shifts_the_labels(build, tmp_path):
    torch.manual_seed(0)
    model = build().eval()
    ids = torch.randint(3, 96, (2, 12))
    labels = ids.clone()
    labels[1, 9:] = -100
    args = TrainingArguments(output_dir=str(tmp_path), label_smoothing_factor=EPS, report_to=[], use_cpu=True)
    trainer = Trainer(model=model, args=args)
    with torch.no_grad():
        got = trainer.compute_loss(model, {"input_ids": ids, "labels": labels})
        out = model(input_ids=ids)
        shifted = LabelSmoother(epsilon=EPS)(out, labels, shift_labels=True)
        unshifted = LabelSmoother(epsilon=EPS)(out, labels)
    assert not torch.isclose(shifted, unshifted, rtol=0, atol=1e-4), "the check needs the two to differ"
    torch.testing.assert_close(got, shifted, rtol=1e-6, atol=1e-6)


def test_causal_lm_names_keep_auto_lookups_working():
    """The names are listed without breaking the Auto mapping (its iteration, and lookups by config)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    from hf_ext.models.fog import FogConfig

    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["fog"] == "FogForCausalLM"
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["layer_parallel"] == "LayerParallelForCausalLM"
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["grok_decoder"] == "GrokDecoderForCausalLM"
    assert MODEL_FOR_CAUSAL_LM_MAPPING_NAMES["llama"] == "LlamaForCausalLM"
    assert len(MODEL_FOR_CAUSAL_LM_MAPPING.values()) == len(MODEL_FOR_CAUSAL_LM_MAPPING.keys()) > 0
    cfg = FogConfig.fog(vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        num_key_value_heads=2, swiglu_intermediate_size=64)  # fmt: skip
    assert type(AutoModelForCausalLM.from_config(cfg)).__name__ == "FogForCausalLM"
