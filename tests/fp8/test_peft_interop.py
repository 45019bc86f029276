"""`Fp8Trainer` with a peft model: LoRA on an FP8-converted FOG trains only the adapters, checkpoints hold the adapter
and the frozen base layers' FP8 scaling state, and a run resumed from a copied checkpoint matches an uninterrupted
one."""

import logging
import os
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import TrainingArguments

from hf_ext.fp8 import Fp8Trainer, convert
from hf_ext.fp8.trainer import FP8_STATE_FILE, _peft_fp8_buffers
from hf_ext.models.fog import FogConfig, FogForCausalLM

ROWS = torch.randint(0, 64, (32, 16), generator=torch.Generator().manual_seed(0)).tolist()


def fp8_fog():
    torch.manual_seed(0)
    model = FogForCausalLM(
        FogConfig.fog(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    )
    convert(model, "emulated", scaling="delayed", amax_history_len=16)
    return model


def lora_on_fp8_fog():
    model = fp8_fog()
    torch.manual_seed(1)
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def collate(features):
    ids = torch.tensor([f["input_ids"] for f in features])
    return {"input_ids": ids, "labels": ids}


def trainer(model, out, max_steps=4) -> Fp8Trainer:
    from datasets import Dataset

    args = TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, learning_rate=1e-2,
        save_strategy="steps", save_steps=2, report_to="none", use_cpu=True, seed=0, disable_tqdm=True,
        logging_steps=100,
    )  # fmt: skip
    return Fp8Trainer(
        model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ROWS}), data_collator=collate
    )


def fp8_buffers(model) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.rpartition(".")[2].startswith("fp8_")}


def test_resume_of_lora_on_an_fp8_converted_fog_matches_the_uninterrupted_run(tmp_path):
    """The adapter checkpoint left out the base layers' delayed-scaling amax histories: the resumed run started
    from empty histories, scaled its FP8 GEMMs differently and ended with other adapter weights."""
    full = lora_on_fp8_fog()
    frozen = {n: p.detach().clone() for n, p in full.named_parameters() if not p.requires_grad}
    trainer(full, tmp_path / "full").train()
    assert all(torch.equal(p, frozen[n]) for n, p in full.named_parameters() if n in frozen)  # adapters only
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and not (checkpoint / "model.safetensors").exists()
    shutil.copytree(checkpoint, tmp_path / "moved" / "checkpoint-2")  # resume from another folder

    resumed = lora_on_fp8_fog()
    trainer(resumed, tmp_path / "resumed").train(resume_from_checkpoint=str(tmp_path / "moved" / "checkpoint-2"))
    expected, got = fp8_buffers(full), fp8_buffers(resumed)
    assert expected and any(b.abs().sum() > 0 for b in expected.values())
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value, rtol=0, atol=0, msg=name)
    trained = dict(resumed.named_parameters())
    for name, param in full.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(trained[name], param, rtol=0, atol=0, msg=name)
    assert "fp8_state.safetensors" in os.listdir(checkpoint)


def test_resume_from_a_checkpoint_without_the_fp8_state_warns(tmp_path, caplog):
    import logging

    trainer(lora_on_fp8_fog(), tmp_path / "full").train()
    moved = tmp_path / "moved" / "checkpoint-2"
    shutil.copytree(tmp_path / "full" / "checkpoint-2", moved)
    (moved / "fp8_state.safetensors").unlink()
    with caplog.at_level(logging.WARNING, logger="hf_ext.fp8.trainer"):
        trainer(lora_on_fp8_fog(), tmp_path / "resumed").train(resume_from_checkpoint=str(moved))
    assert "fp8_state.safetensors" in caplog.text and "starts empty" in caplog.text


def test_load_best_model_at_end_restores_the_best_checkpoints_fp8_state(tmp_path):
    """`load_best_model_at_end` restored the best checkpoint's adapter but kept the last step's amax histories, so the
    final model (and the final save) paired the two and evaluated differently from the logged best eval loss."""
    from datasets import Dataset
    from safetensors.torch import load_file

    model = lora_on_fp8_fog()
    t = trainer(model, tmp_path / "out")
    t.args.eval_strategy, t.args.eval_steps, t.args.load_best_model_at_end = "steps", 2, True
    t.args.metric_for_best_model, t.args.greater_is_better = "eval_loss", True  # checkpoint-2 is the "best"
    t.eval_dataset = Dataset.from_dict({"input_ids": ROWS[:8]})
    t.train()
    assert t.state.best_model_checkpoint.endswith("checkpoint-2")
    best = load_file(os.path.join(t.state.best_model_checkpoint, "fp8_state.safetensors"))
    now = fp8_buffers(model)
    for name, value in best.items():
        torch.testing.assert_close(now[name], value, rtol=0, atol=0, msg=name)
    logged = [h["eval_loss"] for h in t.state.log_history if "eval_loss" in h][0]
    assert t.evaluate()["eval_loss"] == logged


def test_a_converted_model_without_peft_has_no_separate_fp8_state_and_resumes_without_a_warning(tmp_path, caplog):
    """A plain converted model keeps its amax histories in `model.safetensors`: no `fp8_state.safetensors` is written
    (kills F1: `_peft_fp8_buffers` not limited to peft models) and its resume does not warn that the FP8 state is
    missing (kills F13: `_load_fp8_state` without its `if not own: return`)."""
    model = fp8_fog()
    assert any(n.rpartition(".")[2].startswith("fp8_") for n, _ in model.named_buffers())
    assert _peft_fp8_buffers(model) == {}
    trainer(model, tmp_path / "full").train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    assert (checkpoint / "model.safetensors").is_file()
    assert not (checkpoint / FP8_STATE_FILE).exists()
    with caplog.at_level(logging.WARNING, logger="hf_ext.fp8.trainer"):
        trainer(fp8_fog(), tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))
    assert FP8_STATE_FILE not in caplog.text


def test_resume_refuses_an_fp8_state_of_other_layers(tmp_path):
    """An `fp8_state.safetensors` whose buffers are not the model's is refused with the fix, not loaded in part
    (kills F10: dropping the key-set check loads a subset silently)."""
    trainer(lora_on_fp8_fog(), tmp_path / "full", max_steps=2).train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    state = load_file(checkpoint / FP8_STATE_FILE)
    assert len(state) > 1
    save_file(dict(list(state.items())[1:]), checkpoint / FP8_STATE_FILE)  # one layer's buffer missing
    with pytest.raises(ValueError, match="FP8 state of other layers"):
        trainer(lora_on_fp8_fog(), tmp_path / "resumed").train(resume_from_checkpoint=str(checkpoint))


def test_a_process_that_does_not_save_writes_no_fp8_state(tmp_path, monkeypatch):
    """Only the saving process writes the file (kills F4: without `if not self.args.should_save: return`, every rank
    of a multi-process run writes `fp8_state.safetensors`, even where `Trainer.save_model` wrote nothing)."""
    t = trainer(lora_on_fp8_fog(), tmp_path / "out")
    monkeypatch.setattr(TrainingArguments, "should_save", property(lambda self: False))
    t.save_model(str(tmp_path / "saved"))
    assert not os.path.exists(tmp_path / "saved" / FP8_STATE_FILE)
    monkeypatch.undo()
    t.save_model(str(tmp_path / "saved"))
    assert os.path.isfile(tmp_path / "saved" / FP8_STATE_FILE)
