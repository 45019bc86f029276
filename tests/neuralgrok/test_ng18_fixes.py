"""Fixes of audit ng18 (NeuralGrok trainer, recipe and cost benchmark).

- F1: the recipe carves out (and checks) the outer set only when a method that trains on D_inner (neuralgrok,
  normalize) is selected: `--p 7 --methods none` was refused for an empty outer set it does not use, and the fix the
  error suggested (--outer_fraction) as a flag `none` does not read. The smallest working --outer_fraction that the
  errors suggest is rounded up (0.0476 for 21 training rows still gave an empty outer set).
- F2: a resume with other amplifier widths (`amplifier_hidden_dims`, recorded in every checkpoint) is refused by name
  before anything is loaded; it failed with torch's size mismatch after the model weights and the base optimizer had
  been restored, and in the recipe only after the earlier runs of the command had resumed and trained.
- F3: an outer set without `labels` (which the outer loss, the model's own, needs) is refused when the trainer is
  built, by name; `amplifier_outer_step` names an outer batch that gives no loss. Both failed at the first outer step
  (after `outer_every` steps and their checkpoints) with an unnamed `TypeError`.
- F4: scripts/bench_neuralgrok.py passes each recipe flag after `--` to the runners whose method reads it: every
  NeuralGrok option (`--outer_every 8`, the amplifier's widths) was passed to the baseline too, which refused it.
"""

import os
import re

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)
from hf_ext.recipes.neuralgrok import main as recipe_main


@pytest.fixture(scope="module")
def bench(repo_root):
    import runpy

    return runpy.run_path(os.path.join(repo_root, "scripts", "bench_neuralgrok.py"))


@pytest.fixture(scope="module")
def splits():
    return split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.2, seed=0)


def _model(seed=0):
    torch.manual_seed(seed)
    return GrokDecoderForCausalLM(
        GrokDecoderConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    )


def _args(out, **kw):
    base = dict(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=2,
        outer_every=2,
        amplifier_hidden_dims=[4],
        use_cpu=True,
        disable_tqdm=True,
        report_to="none",
        save_strategy="steps",
        save_steps=2,
    )
    base.update(kw)
    return NeuralGrokConfig(**base)


def _snapshot(root):
    return {
        os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files
    }


# ------------------------------------------------------------------------------------------------------------- F2
def test_resume_with_other_amplifier_widths_is_refused_by_name_before_anything_is_loaded(splits, tmp_path):
    NeuralGrokTrainer(
        model=_model(), args=_args(tmp_path / "a"), train_dataset=splits["inner"], outer_dataset=splits["outer"]
    ).train()
    resumed = NeuralGrokTrainer(
        model=_model(seed=1),
        args=_args(tmp_path / "b", max_steps=4, amplifier_hidden_dims=[8, 4]),
        train_dataset=splits["inner"],
        outer_dataset=splits["outer"],
    )
    weights = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    amplifier = {k: v.clone() for k, v in resumed.amplifier.state_dict().items()}
    with pytest.raises(ValueError, match=r"amplifier_hidden_dims=\[4\] in the checkpoint, \[8, 4\] now"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    # nothing restored: not the model's weights (Trainer loads them before the optimizers), nor the amplifier
    assert all(torch.equal(v, weights[k]) for k, v in resumed.model.state_dict().items())
    assert all(torch.equal(v, amplifier[k]) for k, v in resumed.amplifier.state_dict().items())
    assert resumed.state.global_step == 0 and not list((tmp_path / "b").glob("checkpoint-*"))


def test_a_given_amplifier_of_another_shape_is_refused_before_anything_is_loaded(splits, tmp_path):
    """An `amplifier=` with dropout has its MLP's layers at other indices: the checkpoint records no option for it,
    so its parameters are compared with the checkpoint's amplifier file (it failed in torch's load_state_dict)."""
    NeuralGrokTrainer(
        model=_model(), args=_args(tmp_path / "a"), train_dataset=splits["inner"], outer_dataset=splits["outer"]
    ).train()
    resumed = NeuralGrokTrainer(
        model=_model(seed=1),
        args=_args(tmp_path / "b", max_steps=4),
        train_dataset=splits["inner"],
        outer_dataset=splits["outer"],
        amplifier=NeuralAmplifier((4,), dropout=0.1),
    )
    weights = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"its amplifier's parameters .* differ from this run's"):
        resumed.train(resume_from_checkpoint=str(tmp_path / "a" / "checkpoint-2"))
    assert all(torch.equal(v, weights[k]) for k, v in resumed.model.state_dict().items())


def test_resume_option_mismatches_compares_the_amplifier_widths():
    from hf_ext.neuralgrok.trainer import resume_option_mismatches

    args = NeuralGrokConfig(output_dir="unused", gradient_transform="neuralgrok", amplifier_hidden_dims=[32, 32])
    assert resume_option_mismatches({"amplifier_hidden_dims": [32, 32]}, None, args) == []
    assert resume_option_mismatches({"amplifier_hidden_dims": [16]}, None, args) == [
        ("amplifier_hidden_dims", [16], [32, 32])
    ]
    # a trainer's own amplifier overrides args; a checkpoint without the record is not compared
    assert resume_option_mismatches({"amplifier_hidden_dims": [16]}, None, args, amplifier_hidden_dims=(16,)) == []
    assert resume_option_mismatches({}, None, args) == []


RECIPE = [
    "--p", "11", "--hidden_size", "16", "--num_attention_heads", "2", "--seeds", "0", "--methods", "none,neuralgrok",
    "--per_device_train_batch_size", "8", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "1",
    "--report_to", "none", "--disable_tqdm", "true", "--outer_fraction", "0.2", "--outer_every", "1",
    "--amplifier_hidden_dims", "4",
]  # fmt: skip


def test_recipe_resume_with_other_amplifier_widths_is_refused_before_any_run_resumes(tmp_path, capsys):
    out = tmp_path / "run"
    recipe_main(RECIPE + ["--max_steps", "1", "--output_dir", str(out)])
    before = _snapshot(out)
    capsys.readouterr()
    with pytest.raises(ValueError, match=r"--amplifier_hidden_dims 4, but this command gives 8 8"):
        recipe_main(
            RECIPE + ["--max_steps", "2", "--output_dir", str(out), "--resume_from_checkpoint"]
            + ["--amplifier_hidden_dims", "8", "8"]
        )
    assert _snapshot(out) == before  # the baseline run did not resume and train first
    assert "resuming" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------------------------- F3
def test_an_outer_set_without_labels_is_refused_when_the_trainer_is_built(splits, tmp_path):
    with pytest.raises(ValueError, match=r"outer_dataset has no 'labels' \(its columns: \['input_ids'\]\)"):
        NeuralGrokTrainer(
            model=_model(),
            args=_args(tmp_path, max_steps=4, save_steps=1),
            train_dataset=splits["inner"],
            outer_dataset=splits["outer"].remove_columns("labels"),
        )
    assert not list(tmp_path.glob("checkpoint-*"))


def test_an_outer_set_whose_collator_adds_the_labels_is_accepted_and_the_check_draws_no_random_number(splits, tmp_path):
    """A data collator may build the labels (as DataCollatorForLanguageModeling does): the check collates one row, and
    puts back the random generators that a collator may draw from."""

    def collator(rows):
        ids = torch.stack([torch.as_tensor(r["input_ids"]) for r in rows])
        torch.rand(1)  # a collator that draws random numbers (masking)
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        return {"input_ids": ids, "labels": labels}

    def build(outer):
        return NeuralGrokTrainer(
            model=_model(),
            args=_args(tmp_path, max_steps=2, outer_every=1, save_strategy="no"),
            train_dataset=splits["inner"],
            outer_dataset=outer,
            data_collator=collator,
        )

    build(splits["outer"])  # rows with labels: nothing collated
    state = torch.get_rng_state()  # what building a trainer (which seeds the generators) leaves
    trainer = build(splits["outer"].remove_columns("labels"))
    assert torch.equal(torch.get_rng_state(), state)
    trainer.train()
    assert trainer.num_outer_steps == 2 and trainer.last_outer_loss is not None


def test_amplifier_outer_step_names_an_outer_batch_that_gives_no_loss():
    from hf_ext.neuralgrok import amplifier_outer_step

    model = _model()
    amplifier = NeuralAmplifier((4,))
    meta = torch.optim.Adam(amplifier.parameters(), lr=1e-4)
    ids = torch.tensor([[1, 11, 2, 12, 3], [4, 11, 5, 12, 9]])
    labels = torch.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    inner = [{"input_ids": ids, "labels": labels}]
    with pytest.raises(ValueError, match=r"outer batch 1 \(keys \['input_ids'\]\) gave no scalar loss .* `labels`"):
        amplifier_outer_step(amplifier, meta, model, inner, [inner[0], {"input_ids": ids}], virtual_lr=1e-3)
    with pytest.raises(ValueError, match=r"inner batch 0 .* gave no scalar loss"):
        amplifier_outer_step(amplifier, meta, model, [{"input_ids": ids}], inner, virtual_lr=1e-3)


# ------------------------------------------------------------------------------------------------------------- F1
SMALL_P = [
    "--p", "7", "--hidden_size", "16", "--num_attention_heads", "2", "--max_steps", "1", "--seeds", "0",
    "--per_device_train_batch_size", "8", "--eval_steps", "1", "--report_to", "none", "--disable_tqdm", "true",
]  # fmt: skip


@pytest.mark.parametrize("methods", ["none", "none,grokfast_ema"])
def test_recipe_runs_methods_without_an_outer_set_at_a_small_modulus(tmp_path, methods):
    """p = 7: 21 training rows, of which the default --outer_fraction 0.02 is no row; these methods use none."""
    results = recipe_main(SMALL_P + ["--methods", methods, "--output_dir", str(tmp_path)])
    assert list(results["methods"]) == methods.split(",")
    assert all(run["steps_run"] == 1 for res in results["methods"].values() for run in res["runs"])


def test_the_baselines_train_on_the_same_rows_whatever_the_outer_fraction():
    ds = build_arithmetic_dataset("a+b", 11)
    rows = [[r.tolist() for r in split_arithmetic_dataset(ds, 0.5, f, seed=3)["train"]["input_ids"]] for f in (0, 0.02, 0.3)]
    assert rows[0] == rows[1] == rows[2]


def test_recipe_names_a_working_outer_fraction_when_neuralgrok_needs_one(tmp_path):
    with pytest.raises(ValueError, match=r"which --methods neuralgrok needs") as err:
        recipe_main(SMALL_P + ["--methods", "none,neuralgrok", "--output_dir", str(tmp_path / "a")])
    suggested = re.search(r"pass --outer_fraction (\S+) or more", str(err.value)).group(1)
    assert suggested == "0.0477"  # 1/21 = 0.04762 rounded up: 0.0476 x 21 rows = 0.9996, no row
    results = recipe_main(
        SMALL_P + ["--methods", "none,neuralgrok", "--outer_fraction", suggested, "--output_dir", str(tmp_path / "b")]
    )
    assert results["methods"]["neuralgrok"]["runs"][0]["steps_run"] == 1


def test_split_suggests_an_outer_fraction_that_gives_an_outer_row():
    from hf_ext.neuralgrok.data import min_outer_fraction

    ds = build_arithmetic_dataset("a+b", 7)  # 49 rows, 24 training rows at 0.5, 21 at 0.44
    for train_fraction in (0.44, 0.5):
        with pytest.raises(ValueError, match="empty outer set") as err:
            split_arithmetic_dataset(ds, train_fraction, 0.01)
        suggested = float(re.search(r"outer_fraction >= (\S+) \(or 0", str(err.value)).group(1))
        assert len(split_arithmetic_dataset(ds, train_fraction, suggested)["outer"]) == 1
    for rows in range(2, 5000):
        value = min_outer_fraction(rows)
        assert int(value * rows) >= 1 and 1 / rows <= value <= 1.01 / rows


# ------------------------------------------------------------------------------------------------------------- F4
def test_bench_passes_neuralgrok_options_to_the_runners_that_read_them(bench, monkeypatch, capsys):
    from hf_ext.recipes import neuralgrok as recipe

    calls, written = {}, []
    real = recipe.main

    def recording(argv, **kwargs):
        calls.setdefault(argv[argv.index("--methods") + 1], []).append(list(argv))
        results = real(argv, **kwargs)
        written.append((kwargs, sorted(os.listdir(argv[argv.index("--output_dir") + 1]))))
        return results

    monkeypatch.setattr(recipe, "main", recording)
    extra = ["--outer_every", "2", "--amplifier_hidden_dims", "8", "4", "--amplifier_c", "0.5", "--num_hidden_layers", "1"]
    summary = bench["main"](["--tiny", "--rounds", "1", "--", *extra])
    assert summary["neuralgrok_cpu_s_per_step"]["mean"] > 0 and summary["recipe_args"][-len(extra) :] == extra
    none, normalize = calls["none"][0], calls["normalize"][0]
    assert "--outer_every" not in none and "--amplifier_c" not in none and none[-2:] == ["--num_hidden_layers", "1"]
    assert "--outer_every" not in normalize and normalize[-4:] == ["--amplifier_c", "0.5", "--num_hidden_layers", "1"]
    for argv in calls["neuralgrok"]:  # both NeuralGrok runners
        assert argv[-len(extra) :] == extra
    assert summary["recipe_args_by_runner"]["neuralgrok_next_step"][-len(extra) :] == extra
    # the runs' folders are temporary: every result file but the two PNGs, which cost more CPU than the 8 steps
    assert len(written) == 4 and all(kwargs == {"plots": False} for kwargs, _ in written)
    for _, files in written:
        assert {"neuralgrok_results.json", "neuralgrok_results.md"} <= set(files), files
        assert not [f for f in files if f.endswith(".png")], files
    assert "curves: " not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--grokfast_alpha", "0.9"], "--grokfast_alpha after `--`: read by no runner"),
        (["--outer-gradient", "next_step"], "--outer_gradient after `--` is set by this script"),
        (["--max_steps=5"], "--max_steps after `--` is set by this script .*use --steps"),
        (["8", "--outer_every"], "must start with a --flag"),
    ],
)
def test_bench_refuses_recipe_args_no_runner_reads_or_that_it_sets_itself(bench, capsys, extra, match):
    with pytest.raises(SystemExit):
        bench["main"](["--tiny", "--rounds", "1", "--", *extra])
    assert re.search(match, capsys.readouterr().err)
