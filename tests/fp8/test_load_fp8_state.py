"""`load_fp8_state`: an adapter trained with `Fp8Trainer` on an FP8-converted base, reloaded for inference with
`PeftModel.from_pretrained`, gets its base layers' FP8 scaling state back from the `fp8_state.safetensors` written
beside it; the reloaded model's eval logits then equal the trained model's exactly (without it they differ)."""

import pytest
import torch
from peft import PeftModel

from hf_ext.fp8 import load_fp8_state

from .test_peft_interop import fp8_buffers, fp8_fog, lora_on_fp8_fog, trainer


def test_an_adapter_reloaded_for_inference_gets_the_trained_fp8_state(tmp_path):
    model = lora_on_fp8_fog()
    t = trainer(model, tmp_path / "run")
    t.train()
    t.save_model(str(tmp_path / "adapter"))
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(5))
    model.eval()
    with torch.no_grad():
        trained = model(input_ids=ids).logits

    reloaded = PeftModel.from_pretrained(fp8_fog(), str(tmp_path / "adapter")).eval()
    with torch.no_grad():
        before = reloaded(input_ids=ids).logits
    assert not torch.equal(before, trained)  # the histories of the fresh base start empty
    assert load_fp8_state(reloaded, str(tmp_path / "adapter")) is True
    state, expected = fp8_buffers(reloaded), fp8_buffers(model)
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, trained)


def test_nothing_to_load_and_other_layers(tmp_path):
    assert load_fp8_state(fp8_fog(), str(tmp_path)) is False  # not a peft model: its state is in model.safetensors
    assert load_fp8_state(lora_on_fp8_fog(), str(tmp_path)) is False  # no file in the folder
    model = lora_on_fp8_fog()
    t = trainer(model, tmp_path / "run", max_steps=2)
    t.train()
    t.save_model(str(tmp_path / "adapter"))
    from peft import LoraConfig, get_peft_model

    other = get_peft_model(fp8_fog(), LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    before = fp8_buffers(other)
    with pytest.raises(ValueError, match="FP8 state of other layers"):
        load_fp8_state(other, str(tmp_path / "adapter"))
    after = fp8_buffers(other)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing loaded in part
