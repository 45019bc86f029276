"""Issue 15 items 3-4: the recipe and Fp8Trainer decay only what the model says (FOG: matrices, as the reference),
and pretrain with transformers' own warmup-stable-decay schedule with a 1-sqrt cooldown over the last 20%."""

import math

import pytest
import torch
from transformers import HfArgumentParser

from hf_ext.fp8 import Fp8Trainer, resolve_wsd_kwargs
from hf_ext.models.fog import FogConfig, FogForCausalLM
from hf_ext.recipes.pretrain import DataArguments, ModelArguments, PretrainTrainingArguments, setup_fp8

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48)


def _args(tmp_path, *extra):
    parser = HfArgumentParser((ModelArguments, DataArguments, PretrainTrainingArguments))
    return parser.parse_args_into_dataclasses(
        args=["--output_dir", str(tmp_path), "--use_cpu", "true", "--fp8_monitor_steps", "0", *extra]
    )


def _groups(trainer):
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    return {g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups}


def test_recipe_trainer_decays_matrices_only(tmp_path):
    model_args, _, training_args = _args(tmp_path)
    model = FogForCausalLM(FogConfig.fog(**TINY))
    trainer_cls, extra, _ = setup_fp8(model, model_args, training_args)
    trainer = trainer_cls(model=model, args=training_args, **extra)
    trainer.create_optimizer()
    groups = _groups(trainer)
    decayed, free = groups[training_args.weight_decay], groups[0.0]
    assert "model.layers.0.mlp.act_fn.alpha_p" in free and "model.layers.0.mlp.act_fn.alpha_n" in free
    assert "model.layers.0.attention_layernorm.weight" in free
    assert "model.layers.0.mlp.up_proj.weight" in decayed and "model.embed_tokens.weight" in decayed
    assert all(trainer.model.get_parameter(n).ndim >= 2 for n in decayed)
    assert not any("q_norm" in n or "k_norm" in n for n in decayed | free)  # frozen: no group at all


def test_fp8_trainer_falls_back_to_trainer_patterns_for_other_models(tmp_path):
    _, _, training_args = _args(tmp_path)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    trainer = Fp8Trainer(model=model, args=training_args)
    assert trainer.get_decay_parameter_names(model) == ["0.weight"]


def test_recipe_default_schedule_is_wsd_with_1_sqrt_cooldown(tmp_path):
    _, _, training_args = _args(tmp_path, "--max_steps", "20", "--warmup_steps", "4", "--learning_rate", "1.0")
    assert training_args.lr_scheduler_type == "warmup_stable_decay"
    model = FogForCausalLM(FogConfig.fog(**TINY))
    trainer = Fp8Trainer(model=model, args=training_args)
    trainer.create_optimizer_and_scheduler(num_training_steps=20)
    from torch.optim.lr_scheduler import LambdaLR

    assert isinstance(trainer.lr_scheduler, LambdaLR)  # transformers' get_wsd_schedule
    lrs = []
    for _ in range(20):
        lrs.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    expected = [s / 4 for s in range(4)] + [1.0] * 12 + [1 - math.sqrt(k / 4) for k in range(4)]
    assert lrs == pytest.approx(expected, abs=1e-12)
    assert training_args.lr_scheduler_kwargs["num_decay_steps"] == 0.2  # the user's value is left as given


@pytest.mark.parametrize(
    "kwargs, match",
    [({"decay_type": "1-sqrt"}, "needs num_decay_steps"), ({"num_decay_steps": 1.5}, "fraction"),
     ({"num_decay_steps": 50}, "exceeds"), ({"num_decay_steps": 0}, "positive"), ({"num_decay_steps": -3}, "positive"),
     ({"num_decay_steps": True}, "positive"), ({"num_decay_steps": "20%"}, "positive")],
)  # fmt: skip
def test_bad_wsd_kwargs_name_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        resolve_wsd_kwargs(kwargs, 20)


def test_lora_matrices_of_a_peft_wrapped_fog_get_weight_decay(tmp_path):
    """peft forwards `decay_parameter_names` to the inner model, whose names lack the wrapper's prefix: the LoRA
    matrices landed in the no-decay group."""
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    model = get_peft_model(FogForCausalLM(FogConfig.fog(**TINY)), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    args = TrainingArguments(str(tmp_path), weight_decay=0.1, use_cpu=True, report_to=[])
    trainer = Fp8Trainer(model=model, args=args)
    trainer.create_optimizer()
    groups = _groups(trainer)
    lora = {n for n, p in model.named_parameters() if p.requires_grad}
    assert len(lora) == 8 and all("lora_" in n for n in lora)
    assert groups[0.1] == lora and not groups.get(0.0)
