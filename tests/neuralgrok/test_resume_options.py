"""NeuralGrokTrainer resumed with other options than its checkpoint's: the meta-Adam's lr / weight decay (and the base
optimizer's weight decay) came back from the checkpoint's param groups, while `amplifier_c`, an attribute recorded in
neuralgrok_state.json, silently took the new value. Now refused by name before anything is restored (one comparison,
`resume_option_mismatches`, which the neuralgrok recipe uses too)."""

import json

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)


def _trainer(splits, out, **kw):
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=4,
        outer_every=2,
        amplifier_hidden_dims=[4],
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
        save_strategy="steps",
        save_steps=2,
    )
    base.update(kw)
    args = NeuralGrokConfig(**base)
    outer = splits["outer"] if args.gradient_transform == "neuralgrok" else None
    return NeuralGrokTrainer(model=model, args=args, train_dataset=splits["inner"], outer_dataset=outer)


OLD = dict(meta_learning_rate=1e-4, meta_weight_decay=1e-3, amplifier_c=1.0)


def test_other_meta_optimizer_options_and_amplifier_c_are_refused_before_anything_is_restored(splits, tmp_path):
    _trainer(splits, tmp_path / "a", **OLD).train()
    resumed = _trainer(splits, tmp_path / "b", meta_learning_rate=5e-2, meta_weight_decay=0.0, amplifier_c=0.2)
    amplifier = {k: v.clone() for k, v in resumed.amplifier.state_dict().items()}
    with pytest.raises(ValueError) as err:
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    message = str(err.value)
    for part in (
        "meta_learning_rate=0.0001 in the checkpoint, 0.05 now",
        "meta_weight_decay=0.001 in the checkpoint, 0.0 now",
        "amplifier_c=1.0 in the checkpoint, 0.2 now",
    ):
        assert part in message
    assert resumed.meta_optimizer.param_groups[0]["lr"] == 5e-2  # the meta-Adam was not restored
    assert all(torch.equal(v, amplifier[k]) for k, v in resumed.amplifier.state_dict().items())
    # refused before the model's weights and the trainer state were loaded (ng18 F2: before Trainer's model load)
    assert resumed.state.global_step == 0 and resumed.num_outer_steps == 0


@pytest.mark.parametrize(
    "kw, part",
    [
        (dict(weight_decay=0.1), "weight_decay=0.001 in the checkpoint, 0.1 now"),
        (dict(adam_beta2=0.9), "adam_beta2=0.98 in the checkpoint, 0.9 now"),
    ],
)
def test_base_weight_decay_and_betas_are_compared_too(splits, tmp_path, kw, part):
    _trainer(splits, tmp_path / "a", max_steps=2).train()
    with pytest.raises(ValueError, match=part):
        _trainer(splits, tmp_path / "b", **kw).train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))


@pytest.mark.parametrize("transform", ["none", "normalize", "grokfast_ema", "grokfast_ma", "neuralgrok"])
@pytest.mark.parametrize(
    "kw, part",
    [
        (dict(adam_beta1=0.8), "adam_beta1=0.9 in the checkpoint, 0.8 now"),
        (dict(adam_beta2=0.9), "adam_beta2=0.98 in the checkpoint, 0.9 now"),
        (dict(adam_epsilon=1e-3), "adam_epsilon=1e-08 in the checkpoint, 0.001 now"),
    ],
)
def test_base_optimizer_betas_and_epsilon_are_compared_for_every_transform(splits, tmp_path, transform, kw, part):
    """The base Adam's `betas` / `eps` come back with its param groups on resume: for `none`, `normalize` and the
    Grokfast filters (no meta-Adam) other betas, and for every transform another `--adam_epsilon`, were ignored
    silently."""
    _trainer(splits, tmp_path / "a", max_steps=2, gradient_transform=transform).train()
    info = json.loads((tmp_path / "a" / "checkpoint-2" / "neuralgrok_state.json").read_text())
    assert (info["adam_beta1"], info["adam_beta2"], info["adam_epsilon"]) == (0.9, 0.98, 1e-8)
    resumed = _trainer(splits, tmp_path / "b", gradient_transform=transform, **kw)
    with pytest.raises(ValueError, match=part) as err:
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert str(err.value).count(part.split("=")[0] + "=") == 1  # named once (also where the meta-Adam has it)
    # refused before the checkpoint's param groups were loaded: before the optimizer was even built (the check runs
    # before Trainer loads the model's weights, ng18 F2)
    assert resumed.optimizer is None


def test_an_optimizer_that_does_not_read_the_adam_flags_records_none_of_them(tmp_path):
    from hf_ext.neuralgrok.trainer import base_optimizer_options

    args = NeuralGrokConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", adam_epsilon=1e-6)
    params = [torch.nn.Parameter(torch.zeros(2))]
    assert base_optimizer_options(args, torch.optim.SGD(params, lr=0.1)) == {}
    assert base_optimizer_options(args, torch.optim.Adagrad(params)) == {}  # eps 1e-10, not the flag's
    adam = torch.optim.AdamW(params, betas=(0.9, 0.98), eps=1e-6)
    assert base_optimizer_options(args, adam) == {"adam_beta1": 0.9, "adam_beta2": 0.98, "adam_epsilon": 1e-6}


def test_normalize_records_and_compares_amplifier_c(splits, tmp_path):
    _trainer(splits, tmp_path / "a", gradient_transform="normalize", amplifier_c=2.0, max_steps=2).train()
    info = json.loads((tmp_path / "a" / "checkpoint-2" / "neuralgrok_state.json").read_text())
    assert info["amplifier_c"] == 2.0
    with pytest.raises(ValueError, match="amplifier_c=2.0 in the checkpoint, 1.0 now"):
        _trainer(splits, tmp_path / "b", gradient_transform="normalize", max_steps=4).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")
        )


def test_the_same_options_resume_and_match_the_uninterrupted_run(splits, tmp_path):
    full = _trainer(splits, tmp_path / "a", **OLD)
    full.train()
    resumed = _trainer(splits, tmp_path / "b", **OLD)
    resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(full.amplifier.parameters(), resumed.amplifier.parameters()):
        assert torch.equal(a, b)


def test_resume_option_mismatches_skips_what_a_checkpoint_does_not_record(tmp_path):
    from hf_ext.neuralgrok.trainer import resume_option_mismatches

    args = NeuralGrokConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    assert resume_option_mismatches({}, None, args) == []
    groups = [{"lr": 1e-4, "weight_decay": 1e-3, "betas": [0.9, 0.98]}]
    assert resume_option_mismatches({"weight_decay": 1e-3, "amplifier_c": 1.0}, {"param_groups": groups}, args) == []
    assert resume_option_mismatches({"amplifier_c": 1.0}, None, args, amplifier_c=3.0) == [("amplifier_c", 1.0, 3.0)]


@pytest.mark.parametrize(
    "transform, first, second, part",
    [
        ("neuralgrok", dict(amplifier_clip_norm=1.0), dict(amplifier_clip_norm=0.5), "amplifier_clip_norm=1.0 in the"),
        ("neuralgrok", dict(outer_every=2), dict(outer_every=1), "outer_every=2 in the checkpoint, 1 now"),
        ("normalize", dict(amplifier_clip_norm=0.0), dict(amplifier_clip_norm=2.0), "amplifier_clip_norm=0.0 in the"),
        ("grokfast_ema", dict(grokfast_alpha=0.98), dict(grokfast_alpha=0.9), "grokfast_alpha=0.98 in the"),
        ("grokfast_ema", {}, dict(grokfast_lamb=3.0), "grokfast_lamb=2.0 in the checkpoint, 3.0 now"),
        ("grokfast_ma", dict(grokfast_window=4), dict(grokfast_window=3), "grokfast_window=4 in the checkpoint, 3"),
        ("grokfast_ma", {}, dict(grokfast_warmup=False), "grokfast_warmup=True in the checkpoint, False now"),
    ],
)
def test_options_on_the_transform_wrapper_are_recorded_and_compared(splits, tmp_path, transform, first, second, part):
    """The clip norm, the outer period and the Grokfast filter's settings are attributes of the wrapper (in no state
    dict): a resume took the new values silently, mid-run."""
    _trainer(splits, tmp_path / "a", max_steps=2, gradient_transform=transform, **first).train()
    with open(tmp_path / "a" / "checkpoint-2" / "neuralgrok_state.json") as fh:
        info = json.load(fh)
    name = part.split("=")[0]
    assert name in info
    with pytest.raises(ValueError, match=part):
        _trainer(splits, tmp_path / "b", gradient_transform=transform, **second).train(
            resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")
        )
    # the same options resume
    _trainer(splits, tmp_path / "c", max_steps=4, gradient_transform=transform, **first).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")
    )


def test_an_optimizer_built_without_the_adam_flags_records_none_even_when_its_default_equals_one(splits, tmp_path):
    """rv16: transformers builds RMSprop from --learning_rate alone, and RMSprop's own eps default (1e-8) equals
    --adam_epsilon's: the value matched, so adam_epsilon was recorded and a resume with another --adam_epsilon (a flag
    the run never read) was refused. Now the flags transformers' Trainer builds the optimizer from are recorded, and
    an optimizer passed by the caller records none."""
    kw = dict(gradient_transform="none", optim="rmsprop", coupled_weight_decay=False)
    _trainer(splits, tmp_path / "a", **kw).train()
    info = json.loads((tmp_path / "a" / "checkpoint-2" / "neuralgrok_state.json").read_text())
    assert not {"adam_beta1", "adam_beta2", "adam_epsilon"} & set(info)
    _trainer(splits, tmp_path / "b", adam_epsilon=1e-6, **kw).train(
        resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2")
    )
    # an AdamW built by transformers from the flags still records (and so compares) all three
    _trainer(splits, tmp_path / "c", gradient_transform="none", optim="adamw_torch", coupled_weight_decay=False).train()
    info = json.loads((tmp_path / "c" / "checkpoint-2" / "neuralgrok_state.json").read_text())
    assert (info["adam_beta1"], info["adam_beta2"], info["adam_epsilon"]) == (0.9, 0.98, 1e-8)  # NeuralGrokConfig


def test_an_optimizer_passed_by_the_caller_records_no_adam_flag(splits, tmp_path):
    trainer = _trainer(splits, tmp_path / "a", gradient_transform="none", coupled_weight_decay=False)
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.optimizer = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8)  # values equal to the flags'
    trainer.train()
    info = json.loads((tmp_path / "a" / "checkpoint-2" / "neuralgrok_state.json").read_text())
    assert not {"adam_beta1", "adam_beta2", "adam_epsilon"} & set(info)
