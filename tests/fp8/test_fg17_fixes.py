"""Audit pass 17 (fg17): accelerate's FP8 path saves (FP8 all-gather only under FSDP2, plain tensors in every save),
an explicit FP8 recipe without fp8 mixed precision is refused, and WSD kwargs are checked by name."""

import pytest
import torch

from hf_ext.fp8 import Fp8Trainer, ao_recipe_kwargs, convert, fp8_converted_modules
from hf_ext.models.fog import FogConfig, FogForCausalLM

CFG = dict(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _fog():
    torch.manual_seed(0)
    return FogForCausalLM(FogConfig.fog(**CFG))


def _dataset():
    import datasets

    rows = torch.randint(0, CFG["vocab_size"], (8, 16), generator=torch.Generator().manual_seed(0)).tolist()
    return datasets.Dataset.from_dict({"input_ids": rows, "labels": rows})


@pytest.fixture
def reset_accelerate():
    from accelerate.state import AcceleratorState, GradientState

    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


# ------------------------------------------------------------------ 1. accelerate's FP8 path saves its checkpoints
@pytest.mark.parametrize("all_gather", [None, True])
def test_fp8_trainer_under_accelerate_fp8_saves_checkpoints_and_the_final_model(
    tmp_path, monkeypatch, reset_accelerate, all_gather
):
    """`ACCELERATE_MIXED_PRECISION=fp8` without FSDP: every checkpoint and `save_model` used to fail ("Attempted to
    access the data pointer on an invalid python storage"), as the FP8 all-gather weight wrapper was on. The saved
    files reload into a plain FOG with the trained weights. `all_gather=True`: a recipe that turns the all-gather on
    explicitly (weights wrapped) still saves plain weights."""
    from transformers import TrainingArguments, default_data_collator

    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")  # what `accelerate launch --mixed_precision fp8` sets
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, use_cpu=True, report_to=[],
        save_strategy="steps", save_steps=1, disable_tqdm=True,
    )  # fmt: skip
    model = _fog()
    extra = {} if all_gather is None else {"fp8_recipe_kwargs": ao_recipe_kwargs(model, fsdp_float8_all_gather=True)}
    trainer = Fp8Trainer(
        model=model, args=args, train_dataset=_dataset(), data_collator=default_data_collator, **extra
    )
    trainer.train()
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    assert len(fp8_converted_modules(model)) == 12
    wrapped = type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "WeightWithDynamicFloat8CastTensor"
    assert wrapped is bool(all_gather)
    trainer.save_model(str(tmp_path / "final"))
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for folder in (tmp_path / "checkpoint-2", tmp_path / "final"):
        loaded = FogForCausalLM.from_pretrained(str(folder))
        state = loaded.state_dict()
        assert type(state["model.layers.0.self_attn.q_proj.weight"]) is torch.Tensor
        assert set(state) == set(trained)
        assert max((state[k] - trained[k].to(state[k].dtype)).abs().max().item() for k in state) == 0.0
    assert (tmp_path / "checkpoint-1" / "model.safetensors").is_file()


def test_ao_recipe_kwargs_all_gathers_in_fp8_only_under_fsdp2(monkeypatch):
    """Default (`fsdp_float8_all_gather=None`): on when accelerate launches with its FSDP plugin at version 2 (or the
    given plugin / TrainingArguments say so) and the recipe is tensorwise; an explicit value wins."""
    from types import SimpleNamespace

    from hf_ext.fp8.convert import fsdp2_in_use

    model = _fog()
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    monkeypatch.delenv("FSDP_VERSION", raising=False)
    assert ao_recipe_kwargs(model).config.enable_fsdp_float8_all_gather is False
    assert ao_recipe_kwargs(model, fsdp_float8_all_gather=True).config.enable_fsdp_float8_all_gather is True
    assert fsdp2_in_use(fsdp_plugin=SimpleNamespace(fsdp_version=2))
    assert not fsdp2_in_use(fsdp_plugin=SimpleNamespace(fsdp_version=1))
    assert fsdp2_in_use(training_args=SimpleNamespace(fsdp_plugin_args={"fsdp_version": 2}))
    assert not fsdp2_in_use(training_args=SimpleNamespace(fsdp_plugin_args=None))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "1")
    assert ao_recipe_kwargs(model).config.enable_fsdp_float8_all_gather is False
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert ao_recipe_kwargs(model).config.enable_fsdp_float8_all_gather is True
    assert ao_recipe_kwargs(model, fsdp_float8_all_gather=False).config.enable_fsdp_float8_all_gather is False
    assert ao_recipe_kwargs(model, recipe="rowwise").config.enable_fsdp_float8_all_gather is False
    with pytest.raises(ValueError, match="tensorwise"):
        ao_recipe_kwargs(model, recipe="rowwise", fsdp_float8_all_gather=True)
    with pytest.raises(ValueError, match="fsdp_float8_all_gather must be True or False"):
        ao_recipe_kwargs(model, fsdp_float8_all_gather="yes")


def test_a_model_converted_with_fp8_all_gather_saves_plain_weights_without_fsdp(tmp_path):
    """`convert(..., fsdp_float8_all_gather=True)` and no FSDP: `save_pretrained` wrote nothing but failed on the
    weight wrapper; its state dict now holds the high-precision tensors, and the model still trains and reloads."""
    model = convert(_fog(), "torchao", fsdp_float8_all_gather=True)
    weight = model.model.layers[0].self_attn.q_proj.weight
    assert type(weight).__name__ == "WeightWithDynamicFloat8CastTensor"  # the wrapper stays for training
    ids = torch.randint(0, CFG["vocab_size"], (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    state = model.state_dict()
    assert all(type(v) is torch.Tensor for v in state.values())
    model.save_pretrained(str(tmp_path))
    loaded = FogForCausalLM.from_pretrained(str(tmp_path)).state_dict()
    assert max((loaded[k] - state[k]).abs().max().item() for k in loaded) == 0.0
    # loading a plain state dict back into the wrapped weights keeps the wrapper
    model.load_state_dict(loaded)
    assert type(model.model.layers[0].self_attn.q_proj.weight).__name__ == "WeightWithDynamicFloat8CastTensor"


# --------------------------------------------------------- 4. an explicit FP8 recipe without fp8 mixed precision
@pytest.mark.parametrize("positional", [False, True])
def test_fp8_recipe_kwargs_without_fp8_mixed_precision_is_refused(tmp_path, monkeypatch, reset_accelerate, positional):
    """The recipe was dropped silently and the run trained in high precision (0 FP8 modules)."""
    from transformers import TrainingArguments

    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    model = _fog()
    args = TrainingArguments(str(tmp_path), max_steps=1, use_cpu=True, report_to=[], save_strategy="no")
    call = (model, args) if positional else ()
    kw = {} if positional else {"model": model, "args": args}
    with pytest.raises(ValueError, match=r"fp8_recipe_kwargs .*'no'.*--mixed_precision fp8.*convert\(model"):
        Fp8Trainer(*call, fp8_recipe_kwargs=ao_recipe_kwargs(model), **kw)
    with pytest.raises(ValueError, match="fp8_recipe_kwargs"):  # Trainer's default arguments read the same variable
        Fp8Trainer(model=model, fp8_recipe_kwargs=ao_recipe_kwargs(model))
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp8")
    args = TrainingArguments(str(tmp_path), max_steps=1, use_cpu=True, report_to=[], save_strategy="no")
    trainer = Fp8Trainer(model=model, args=args, fp8_recipe_kwargs=ao_recipe_kwargs(model))
    assert trainer.accelerator.ao_recipe_handler is trainer.fp8_recipe_kwargs


# ------------------------------------------------------------------------------- 3. WSD lr_scheduler_kwargs by name
@pytest.mark.parametrize(
    "extra, match",
    [({"min_lr_ratio": -1.0}, r"min_lr_ratio=-1.0 must be in \[0, 1\]"),
     ({"min_lr_ratio": 3}, r"min_lr_ratio=3 must be in \[0, 1\]"),
     ({"min_lr_ratio": "0.1"}, "min_lr_ratio='0.1' must be a finite number, not str"),
     ({"min_lr_ratio": float("nan")}, "min_lr_ratio=nan must be a finite number"),
     ({"min_lr_ratio": True}, "min_lr_ratio=True must be a finite number"),
     ({"decay_type": "sqrt"}, r"decay_type='sqrt' is not a warmup_stable_decay curve; use one of 'linear', 'cosine'"),
     ({"warmup_type": "exp"}, "warmup_type='exp' is not a warmup_stable_decay curve"),
     ({"num_cycles": "0.5"}, "num_cycles='0.5' must be a finite number"),
     ({"min_lr": 0.1}, "'min_lr' is not an option of transformers' warmup_stable_decay schedule; use .*min_lr_ratio")],
)  # fmt: skip
def test_wsd_kwargs_are_checked_by_name_before_any_work(tmp_path, extra, match):
    """min_lr_ratio -1 made the 1-sqrt cooldown reach LR 0 a quarter of the way in, 3 raised it to 3x the peak; a
    string or an unknown curve failed only once training started. The pretrain recipe's check says the same first."""
    from transformers import TrainingArguments

    from hf_ext.fp8 import resolve_wsd_kwargs
    from hf_ext.recipes.pretrain import check_wsd_kwargs

    kwargs = {"num_decay_steps": 0.5, "decay_type": "1-sqrt", **extra}
    with pytest.raises(ValueError, match=match):
        resolve_wsd_kwargs(kwargs, 16)
    args = TrainingArguments(
        str(tmp_path), lr_scheduler_type="warmup_stable_decay", lr_scheduler_kwargs=kwargs, max_steps=16,
        report_to=[], use_cpu=True,
    )  # fmt: skip
    with pytest.raises(ValueError, match="--lr_scheduler_kwargs: lr_scheduler_kwargs " + match):
        check_wsd_kwargs(args)


@pytest.mark.parametrize("ratio", [0, 0.0, 0.1, 1.0])
def test_wsd_kwargs_in_range_are_kept(ratio):
    from hf_ext.fp8 import resolve_wsd_kwargs

    given = {"num_decay_steps": 0.5, "decay_type": "cosine", "warmup_type": "1-sqrt", "min_lr_ratio": ratio}
    assert resolve_wsd_kwargs({**given, "num_cycles": 0.5}, 16) == {**given, "num_decay_steps": 8, "num_cycles": 0.5}
