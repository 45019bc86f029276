"""`load_fp8_state`: an adapter trained with `Fp8Trainer` on an FP8-converted base, reloaded for inference with
`PeftModel.from_pretrained`, gets its base layers' FP8 scaling state back from the `fp8_state.safetensors` written
beside it; the reloaded model's eval logits then equal the trained model's exactly (without it they differ). A file of
other layers or of other buffer shapes (another `amax_history_len`) is refused before anything is loaded."""

import os

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import save_file

from hf_ext.fp8 import convert, load_fp8_state
from hf_ext.fp8.trainer import FP8_STATE_FILE, _peft_fp8_buffers
from hf_ext.models.fog import FogConfig, FogForCausalLM

from .test_peft_interop import fp8_buffers, fp8_fog, lora_on_fp8_fog, trainer

SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)


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


def _lora_on_fp8_with_history(history_len):
    torch.manual_seed(0)
    model = convert(FogForCausalLM(FogConfig.fog(**SMALL)), "emulated", amax_history_len=history_len)
    return get_peft_model(model, LoraConfig(r=16, target_modules=["q_proj"], task_type="CAUSAL_LM"))


def _write_state(folder, history_len):
    src = _lora_on_fp8_with_history(history_len)
    state = _peft_fp8_buffers(src)
    for value in state.values():
        value.copy_(torch.arange(1, value.numel() + 1, dtype=value.dtype).reshape(value.shape))
    save_file({k: v.contiguous() for k, v in state.items()}, os.path.join(folder, FP8_STATE_FILE))
    return str(folder)


@pytest.mark.parametrize("saved_len", [1, 16])
def test_load_fp8_state_refuses_another_amax_history_len_and_loads_nothing(tmp_path, saved_len):
    """A history of 1 was broadcast into all 4 rows (returning True); one of 16 failed with torch's bare
    broadcasting RuntimeError naming neither the file nor amax_history_len."""
    folder = _write_state(tmp_path, saved_len)
    model = _lora_on_fp8_with_history(4)
    before = {k: v.clone() for k, v in _peft_fp8_buffers(model).items()}
    with pytest.raises(ValueError, match=rf"fp8_amax_history has shape \({saved_len}, 3\).*\(4, 3\)") as err:
        load_fp8_state(model, folder)
    assert f"amax_history_len={saved_len} in the file, 4 in the model" in str(err.value)
    after = _peft_fp8_buffers(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing copied, not even the same-shape buffers


def test_load_fp8_state_of_the_same_history_len_still_loads(tmp_path):
    folder = _write_state(tmp_path, 4)
    model = _lora_on_fp8_with_history(4)
    assert load_fp8_state(model, folder) is True
    hist = next(v for k, v in _peft_fp8_buffers(model).items() if k.endswith("fp8_amax_history"))
    assert torch.equal(hist, torch.arange(1, 13, dtype=hist.dtype).reshape(4, 3))
