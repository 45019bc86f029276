"""The warmup and cubic Newton recipes: argument errors before any work, and tiny end-to-end runs."""

import json

import pytest


def test_warmup_recipe_bad_arguments(tmp_path):
    from hf_ext.recipes.warmup import main

    out = tmp_path / "o"
    with pytest.raises(ValueError, match="arms"):
        main(["--arms", "sgd", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="warmup_fraction"):
        main(["--warmup_fraction", "0.9", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--architecture"):
        main(["--architecture", "bert", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="--intermediate_size 256"):  # GPT-1's MLP is 4 x hidden
        main(["--architecture", "openai-gpt", "--hidden_size", "64", "--intermediate_size", "128", "--output_dir",
              str(out)])  # fmt: skip
    with pytest.raises(ValueError, match="--hidden_act"):
        main(["--hidden_act", "rleu", "--output_dir", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("architecture, key", [("llama", "hidden_act"), ("gpt2", "activation_function"),
                                               ("openai-gpt", "afn")])  # fmt: skip
def test_warmup_recipe_activation_option_reaches_every_architecture(architecture, key):
    from transformers import AutoModelForCausalLM

    from hf_ext.recipes.warmup import WarmupRecipeArguments, model_config

    class Tokenizer:
        bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

        def __len__(self):
            return 128

    size = dict(hidden_size=32, intermediate_size=128, num_attention_heads=2)
    default = model_config(WarmupRecipeArguments(architecture=architecture, **size), Tokenizer())
    config = model_config(WarmupRecipeArguments(architecture=architecture, hidden_act="relu", **size), Tokenizer())
    assert getattr(config, key) == "relu" != getattr(default, key)
    model = AutoModelForCausalLM.from_config(config)
    assert any(type(m).__name__ == "ReLUActivation" or isinstance(m, __import__("torch").nn.ReLU)
               for m in model.modules())  # fmt: skip


def test_warmup_recipe_post_layernorm_architecture(tmp_path):
    """The post-LN GPT-1 option trains (Conv1D weights: LionAR's neurons are columns)."""
    from hf_ext.recipes.warmup import main

    argv = ["--architecture", "openai-gpt", "--max_steps", "2", "--arms", "adamw_no_warmup,lion_ar_no_warmup",
            "--hidden_size", "32", "--intermediate_size", "128", "--num_attention_heads", "2", "--vocab_size", "512",
            "--block_size", "16", "--max_eval_blocks", "4", "--per_device_train_batch_size", "2", "--metrics_every",
            "1000", "--output_dir", str(tmp_path), "--disable_tqdm", "true", "--use_cpu", "true"]  # fmt: skip
    res = main(argv)
    assert set(res) == {"adamw_no_warmup", "lion_ar_no_warmup"}
    assert all(r["eval_loss"] < 7.0 for r in res.values())  # ln(512) = 6.24 at the start


def test_warmup_claim_is_judged_per_optimizer_with_spread():
    from hf_ext.recipes.warmup import warmup_claim_holds

    assert warmup_claim_holds([0.10, 0.12, 0.09], [0.01, -0.02, 0.0])
    assert not warmup_claim_holds([-0.030, -0.010, 0.006], [-0.031, -0.089, -0.046])  # the measured CPU result
    assert not warmup_claim_holds([0.20, -0.05, 0.10], [0.0, 0.0, 0.0])  # positive mean, but not beyond the spread
    assert not warmup_claim_holds([0.10, 0.11, 0.09], [0.08, 0.07, 0.09])  # LionAR's gap not near zero
    with pytest.raises(ValueError, match="seeds"):
        warmup_claim_holds([0.1], [0.0])


def test_cubic_recipe_bad_arguments(tmp_path):
    from hf_ext.recipes.cubic_newton import main

    out = tmp_path / "o"
    with pytest.raises(ValueError, match="methods"):
        main(["--methods", "lbfgs", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="batch_sizes"):
        main(["--batch_sizes", "0", "--output_dir", str(out)])
    with pytest.raises(ValueError, match="momentum_type"):
        main(["--momentum_type", "none", "--output_dir", str(out)])
    assert not out.exists()


def _tiny_warmup_argv(out, *extra):
    return [
        "--max_steps",
        "4",
        "--arms",
        "adamw_warmup,lion_ar_no_warmup",
        "--warmup_fraction",
        "0.25",
        "--hidden_size",
        "32",
        "--intermediate_size",
        "64",
        "--vocab_size",
        "512",
        "--block_size",
        "32",
        "--max_eval_blocks",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--metrics_every",
        "2",
        "--save_strategy",
        "steps",
        "--save_steps",
        "2",
        "--output_dir",
        str(out),
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
        *extra,
    ]


@pytest.fixture(scope="module")
def tiny_warmup_run(tmp_path_factory):
    """One uninterrupted 4-step run of two arms with checkpoints every 2 steps, shared by the tests that only read it
    (a recipe run costs several seconds): `(output folder, results)`."""
    from hf_ext.recipes.warmup import main

    out = tmp_path_factory.mktemp("warmup") / "full"
    return out, main(_tiny_warmup_argv(out))


def test_warmup_recipe_tiny_run(tiny_warmup_run):
    out, res = tiny_warmup_run
    assert set(res) == {"adamw_warmup", "lion_ar_no_warmup"}
    assert (out / "warmup.png").stat().st_size > 1000
    saved = json.loads((out / "warmup_results.json").read_text())
    assert len(saved["lion_ar_no_warmup"]["update_metrics"]) == 2  # 4 steps, --metrics_every 2
    assert saved["lion_ar_no_warmup"]["eval_loss"] == pytest.approx(res["lion_ar_no_warmup"]["eval_loss"])


def test_warmup_recipe_resume_matches_uninterrupted(tmp_path, tiny_warmup_run):
    """A run interrupted after checkpoint-2 and resumed with a bare --resume_from_checkpoint ends where the
    uninterrupted run ends, for every arm (each arm resumes from its own folder)."""
    import shutil

    from hf_ext.recipes.warmup import main

    out, full = tiny_warmup_run
    for arm in full:
        shutil.copytree(out / arm / "checkpoint-2", tmp_path / "cut" / arm / "checkpoint-2")
    with pytest.raises(ValueError, match="single arm"):  # one folder cannot serve two arms; refused before work
        main(_tiny_warmup_argv(tmp_path / "cut", "--resume_from_checkpoint", str(tmp_path / "cut" / "adamw_warmup")))
    resumed = main(_tiny_warmup_argv(tmp_path / "cut", "--resume_from_checkpoint"))
    for arm, res in full.items():
        assert resumed[arm]["resumed_from"].endswith("checkpoint-2")
        assert resumed[arm]["eval_loss"] == pytest.approx(res["eval_loss"], rel=1e-6, abs=1e-6)
    with pytest.raises(ValueError, match="no arm folder"):
        main(_tiny_warmup_argv(tmp_path / "empty", "--resume_from_checkpoint", "last"))
    assert not (tmp_path / "empty").exists()  # refused before --output_dir is made


def test_cubic_recipe_tiny_run(tmp_path):
    from hf_ext.recipes.cubic_newton import main

    res = main(
        [
            "--problems",
            "logistic",
            "--batch_sizes",
            "1,4",
            "--oracle_budget",
            "40",
            "--n_samples",
            "200",
            "--n_features",
            "14",
            "--eval_points",
            "4",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert {(r["method"], r["batch_size"]) for r in res} == {
        (m, b) for m in ("sgd", "adam", "cn", "cn_momentum") for b in (1, 4)
    }
    for r in res:
        assert r["rows"][-1]["oracle_calls"] <= 40
    assert (tmp_path / "cubic_newton.png").stat().st_size > 1000


def test_a9a_like_data_is_seeded():
    import torch

    from hf_ext.recipes.cubic_newton import make_a9a_like

    torch.manual_seed(123)  # the global RNG state must not matter
    A1, y1 = make_a9a_like(300, 40, seed=0)
    torch.manual_seed(456)
    A2, y2 = make_a9a_like(300, 40, seed=0)
    assert torch.equal(A1, A2) and torch.equal(y1, y2)
    A3, _ = make_a9a_like(300, 40, seed=1)
    assert not torch.equal(A1, A3)
    assert torch.all(A1.sum(1) == 14) and 0.1 < float((y1 > 0).double().mean()) < 0.4
