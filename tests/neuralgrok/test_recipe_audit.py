"""The neuralgrok recipe refuses, by name and before --output_dir is created, flags it cannot honour: an unknown or
non-causal --model_type (was: transformers' error after the folder was made), --gradient_transform (was: silently
ignored) and --stop_at_target without evaluations (was: accepted, the target can never be seen)."""

import pytest

from hf_ext.recipes.neuralgrok import main

TINY = [
    "--p", "11", "--hidden_size", "32", "--per_device_train_batch_size", "16",
    "--disable_tqdm", "true", "--report_to", "none", "--max_steps", "2", "--seeds", "0", "--methods", "none",
]  # fmt: skip
OUTER = ["--outer_fraction", "0.2"]  # read only by normalize and neuralgrok (--methods none refuses it)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model_type", "not_a_model"], "--model_type='not_a_model'"),
        (["--model_type", "t5"], "--model_type='t5'"),  # a seq2seq model: no causal LM
        (["--gradient_transform", "neuralgrok"], "--gradient_transform='neuralgrok'.*--methods"),
        (["--stop_at_target", "true", "--eval_strategy", "no"], "--stop_at_target.*--eval_strategy"),
    ],
)
def test_flags_that_cannot_apply_are_refused_before_writing(tmp_path, argv, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(TINY + argv + ["--output_dir", str(out)])
    assert not out.exists()


def test_help_describes_the_recipes_resume_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "<output_dir>/<method>-seed<seed>" in text  # was: TrainingArguments' generic text


def test_transformers_model_types_cannot_see_the_answer():
    """The input holds the whole equation [a, +, b, =, r]: with `--model_type bert` the recipe built a bidirectional
    BertLMHeadModel that read r off its input (test accuracy 1.0 after 60 steps on a+b mod 11, at chance now)."""
    import torch

    from hf_ext.recipes.neuralgrok import GrokModelArguments, build_model

    for model_type in ("bert", "llama"):
        torch.manual_seed(0)
        model = build_model(GrokModelArguments(model_type=model_type, hidden_size=32), 13, 5).eval()
        ids = torch.tensor([[1, 11, 2, 12, 3]])
        other = ids.clone()
        other[0, -1] = 7
        with torch.no_grad():
            a, b = model(input_ids=ids).logits[0, :-1], model(input_ids=other).logits[0, :-1]
        torch.testing.assert_close(a, b, msg=model_type)


def test_a_non_causal_model_type_is_refused_before_writing(tmp_path, monkeypatch):
    from transformers import BertConfig, BertLMHeadModel

    import hf_ext.recipes.neuralgrok as recipe

    def bidirectional(model_args, vocab_size, seq_len):
        cfg = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=16)  # fmt: skip
        return BertLMHeadModel(cfg)

    monkeypatch.setattr(recipe, "build_model", bidirectional)
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="--model_type='bert' is not causal"):
        main(TINY + ["--model_type", "bert", "--output_dir", str(out)])
    assert not out.exists()


def test_a_checkpoint_of_another_method_is_refused_before_writing(tmp_path):
    """Was: refused by the trainer only once training started (after the run folder was made), naming
    gradient_transform, which is not a flag of this recipe."""
    main(TINY[:-2] + [*OUTER, "--methods", "normalize", "--max_steps", "1", "--save_strategy", "steps",
                      "--save_steps", "1", "--eval_strategy", "no", "--output_dir", str(tmp_path / "first")])  # fmt: skip
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="checkpoint of a 'normalize' run, but --methods is 'neuralgrok'"):
        main(TINY[:-2] + [*OUTER, "--methods", "neuralgrok", "--output_dir", str(out), "--resume_from_checkpoint",
                          str(tmp_path / "first" / "normalize-seed0" / "checkpoint-1")])  # fmt: skip
    assert not out.exists()


def test_a_checkpoint_of_the_other_weight_decay_baseline_is_refused_before_writing(tmp_path):
    """`none` and `none_strong_wd` share the transform "none", and the optimizer's param groups bring the
    checkpoint's weight decay back on resume: a swapped checkpoint trained the other baseline silently."""
    main(TINY[:-2] + ["--methods", "none_strong_wd", "--max_steps", "1", "--save_strategy", "steps",
                      "--save_steps", "1", "--eval_strategy", "no", "--output_dir", str(tmp_path / "first")])  # fmt: skip
    checkpoint = tmp_path / "first" / "none_strong_wd-seed0" / "checkpoint-1"
    out = tmp_path / "never"
    with pytest.raises(ValueError, match="weight decay 0.01, but --methods none trains with 0.001.*none_strong_wd"):
        main(TINY[:-2] + ["--methods", "none", "--output_dir", str(out), "--resume_from_checkpoint",
                          str(checkpoint)])  # fmt: skip
    assert not out.exists()
    main(TINY[:-2] + ["--methods", "none_strong_wd", "--eval_strategy", "no", "--output_dir", str(out),
                      "--resume_from_checkpoint", str(checkpoint)])  # fmt: skip
    assert (out / "none_strong_wd-seed0").is_dir()
