"""The mislabeled-data detection / data selection recipe: a tiny end-to-end run, argument checks, and the slow
reproduction of the method ordering."""

import json
import os

import numpy as np
import pytest

from hf_ext.recipes.hyperinf import main

TINY = [
    "--pretrain_steps", "4", "--hidden_size", "32", "--max_train", "40", "--num_val", "8", "--num_test", "16",
    "--num_train_epochs", "1", "--methods", "hyperinf,datainf,tracin", "--select_fraction", "0.75",
    "--disable_tqdm", "true", "--num_threads", "1",
]  # fmt: skip


def test_recipe_tiny_run(tmp_path):
    out = tmp_path / "run"
    results = main(TINY + ["--output_dir", str(out)])
    assert set(results["methods"]) == {"hyperinf", "datainf", "tracin"}
    for res in results["methods"].values():
        assert 0.0 <= res["recall_at_inspect"] <= 1.0 and 0.0 <= res["auc"] <= 1.0
        assert res["seconds"] > 0 and res["peak_memory_mb"] >= 0
    assert results["methods"]["hyperinf"]["state_mb"] > 0
    assert set(results["selection"]) == {"full", "random", "hyperinf", "datainf", "tracin"}
    assert abs(results["selection"]["random"]["size"] - 30) <= 1 and results["selection"]["full"]["size"] == 40
    assert int(results["is_noisy"].sum()) == 8
    saved = json.loads((out / "hyperinf_results.json").read_text())
    assert saved["methods"]["hyperinf"]["auc"] == pytest.approx(results["methods"]["hyperinf"]["auc"])
    assert (out / "detection_curves.png").stat().st_size > 0 and (out / "selection_loss.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, match",
    [
        (["--methods", "hyperinf,kfac"], "--methods"),
        (["--domains", "networking"], "--domains"),
        (["--domains", "networking,astrology"], "unknown domain"),
        (["--noise_rate", "1.5"], "--noise_rate"),
        (["--select_fraction", "0"], "--select_fraction"),
        (["--schulz_init", "zeros"], "--schulz_init"),
        (["--model_name_or_path", "someone/some-model"], "HF_HUB_OFFLINE"),
        # audit defect 3: these failed only after pretraining and fine-tuning (leaving output_dir/base/ behind), or
        # named another argument
        (["--damping_scale", "0"], "--damping_scale"),
        (["--damping_scale", "-1", "--methods", "hyperinf"], "--damping_scale"),
        (["--damping_scale", "inf"], "--damping_scale"),
        (["--damping_scale", "nan"], "--damping_scale"),
        (["--schulz_iterations", "-3"], "--schulz_iterations must be >= 0"),
    ],
)
def test_recipe_rejects_bad_arguments_before_writing(tmp_path, args, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(args + ["--output_dir", str(out)])
    assert not out.exists()


def test_recipe_resume_equals_uninterrupted_run(tmp_path):
    """Issue 21.3: `--resume_from_checkpoint` resumes the LoRA fine-tuning (checkpoints in --output_dir, the
    pretrained base reused); the resumed run ends with the same model and scores as an uninterrupted one."""
    import shutil

    args = TINY + ["--methods", "hyperinf,tracin", "--select_fraction", "1.0", "--save_strategy", "steps"]
    args += ["--save_steps", "2", "--num_train_epochs", "2"]  # 40 examples / 16 per step: 3 steps an epoch
    full = main(args + ["--output_dir", str(tmp_path / "full")])
    assert (tmp_path / "full" / "checkpoint-2").is_dir() and (tmp_path / "full" / "checkpoint-6").is_dir()
    resumed_dir = tmp_path / "resumed"  # an interrupted run: the base and the checkpoint of step 2 only
    shutil.copytree(tmp_path / "full" / "base", resumed_dir / "base")
    shutil.copytree(tmp_path / "full" / "checkpoint-2", resumed_dir / "checkpoint-2")
    copied_state = resumed_dir / "checkpoint-2" / "trainer_state.json"
    mtime = copied_state.stat().st_mtime_ns
    resumed = main(args + ["--output_dir", str(resumed_dir), "--resume_from_checkpoint", "last"])
    assert copied_state.stat().st_mtime_ns == mtime  # continued from step 2: a restart would save checkpoint-2 again
    state = json.loads((resumed_dir / "checkpoint-6" / "trainer_state.json").read_text())
    assert state["global_step"] == 6 and (resumed_dir / "checkpoint-4").is_dir()
    assert resumed["fine_tune"]["val"]["loss"] == pytest.approx(full["fine_tune"]["val"]["loss"], rel=1e-5)
    for method in ("hyperinf", "tracin"):
        np.testing.assert_allclose(resumed["scores"][method], full["scores"][method], rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="--resume_from_checkpoint"):  # nothing to resume from: refused up front
        main(args + ["--output_dir", str(tmp_path / "empty"), "--resume_from_checkpoint", "last"])
    lone = tmp_path / "no_base"  # a checkpoint without the pretrained base it was trained on
    shutil.copytree(tmp_path / "full" / "checkpoint-2", lone / "checkpoint-2")
    with pytest.raises(ValueError, match="pretrained base"):
        main(args + ["--output_dir", str(lone), "--resume_from_checkpoint", "last"])


@pytest.mark.slow
def test_hyperinf_detects_mislabeled_data_against_datainf_lissa_and_tracin(tmp_path):
    """Four seeds (one pretrained base; four splits, noise draws and LoRA runs) of the mislabeled-data detection recipe.

    Asserted on the seed means, with one flipped example (1/59) of slack in recall@20% and 0.01 in ROC-AUC: HyperINF
    is at least DataInf and LiSSA in both. Against single-checkpoint TracIn (no curvature) the test asserts only what
    holds: HyperINF's AUC is at least TracIn's (slack 0.01) while their recall@20% are within three flipped examples
    of each other, either way round; which one wins is printed and recorded in docs/hyperinf.md. Every method beats
    random inspection (recall 0.2)."""
    methods = "hyperinf,datainf,lissa,tracin"
    recall = {m: [] for m in methods.split(",")}
    auc = {m: [] for m in methods.split(",")}
    base = None
    for seed in (42, 1, 2, 3):
        out = tmp_path / f"seed{seed}"
        args = ["--methods", methods, "--select_fraction", "1.0", "--seed", str(seed), "--output_dir", str(out)]
        args += ["--disable_tqdm", "true", "--num_threads", "1"]
        if base is not None:
            args += ["--model_name_or_path", base]
        results = main(args)
        base = base or os.path.join(out, "base")
        for m in recall:
            recall[m].append(results["methods"][m]["recall_at_inspect"])
            auc[m].append(results["methods"][m]["auc"])
        for m in recall:
            print(seed, m, results["methods"][m]["recall_at_inspect"], results["methods"][m]["auc"],
                  results["methods"][m]["seconds"], results["methods"][m]["peak_memory_mb"])  # fmt: skip
    mean = {m: float(np.mean(v)) for m, v in recall.items()}
    mean_auc = {m: float(np.mean(v)) for m, v in auc.items()}
    spread = {m: (float(np.min(v)), float(np.max(v))) for m, v in recall.items()}
    print("mean recall@20%", mean, "min/max", spread, "mean AUC", mean_auc)
    print("recall@20% winner:", max(mean, key=mean.get), "AUC winner:", max(mean_auc, key=mean_auc.get))
    slack = 1.0 / 59  # one of the 59 flipped examples
    assert mean["hyperinf"] >= mean["datainf"] - slack
    assert mean["hyperinf"] >= mean["lissa"] - slack
    assert all(mean[m] > 0.25 for m in mean)
    assert mean_auc["hyperinf"] > 0.55
    assert mean_auc["hyperinf"] >= max(mean_auc["datainf"], mean_auc["lissa"]) - 0.01
    assert mean_auc["hyperinf"] >= mean_auc["tracin"] - 0.01
    assert abs(mean["hyperinf"] - mean["tracin"]) <= 3 * slack


LLM_TINY = [
    "--task", "llm_selection", "--pretrain_steps", "2", "--hidden_size", "32", "--max_train", "24", "--num_val", "4",
    "--num_test", "8", "--prompt_tokens", "8", "--answer_tokens", "3", "--num_train_epochs", "1",
    "--methods", "hyperinf,tracin", "--select_fractions", "0.5", "--disable_tqdm", "true", "--num_threads", "1",
]  # fmt: skip


def test_llm_selection_tiny_run(tmp_path):
    """Issue 23.4 smoke test: LoRA causal LM on instruction data with corrupted answers; every method's top-50%
    selection and a random one are fine-tuned and evaluated; JSON, Markdown table and PNG are written."""
    out = tmp_path / "llm"
    results = main(LLM_TINY + ["--output_dir", str(out)])
    num_corrupted = results["config"]["num_corrupted"]
    assert num_corrupted == int(results["corrupted"].sum()) and 2 <= num_corrupted <= 5  # at most round(0.2 * 24)
    names = [(row["name"], row["fraction"]) for row in results["selection"]]
    assert names[:2] == [("full", 1.0), ("clean (oracle)", (24 - num_corrupted) / 24)]
    assert set(names[2:]) == {(m, 0.5) for m in ("random", "hyperinf", "tracin")}
    for row in results["selection"][2:]:
        assert 6 <= row["size"] <= 18 and 0 <= row["corrupted_kept"] <= num_corrupted  # about half of each kind/domain
        assert row["test"]["loss"] > 0 and 0 <= row["test"]["token_accuracy"] <= 1
    assert 0.0 <= results["methods"]["hyperinf"]["auc_corrupted"] <= 1.0
    table = (out / "llm_selection.md").read_text()
    size = results["selection"][2]["size"]  # per-group rounding may keep more than half of a tiny set (hi47)
    keep = "50%" if abs(size / 24 - 0.5) <= 0.01 else f"{size / 24:.0%} (asked 50%)"
    assert table.count("\n") == 2 + 5 and f"| hyperinf | {keep} | {size} |" in table
    assert len({row["size"] for row in results["selection"][2:]}) == 1  # random is drawn from the same groups
    saved = json.loads((out / "llm_selection_results.json").read_text())
    assert saved["selection"][0]["test"]["loss"] == pytest.approx(results["selection"][0]["test"]["loss"])
    assert (out / "llm_selection.png").stat().st_size > 0


@pytest.mark.parametrize(
    "args, match",
    [
        (["--task", "llm_selection", "--select_fractions", "0.5,1.5"], "--select_fractions"),
        (["--task", "llm_selection", "--instruction_kinds", "topic,poem"], "--instruction_kinds"),
        (["--task", "generation"], "--task"),
    ],
)
def test_llm_selection_rejects_bad_arguments_before_writing(tmp_path, args, match):
    out = tmp_path / "never"
    with pytest.raises(ValueError, match=match):
        main(args + ["--output_dir", str(out)])
    assert not out.exists()


LLM_SELECTION_ARGS = [
    "--task", "llm_selection", "--num_val", "120", "--num_test", "120", "--noise_rate", "0.3",
    "--methods", "hyperinf,datainf,lissa,tracin", "--select_fractions", "0.5", "--num_train_epochs", "10",
    "--learning_rate", "1e-2", "--target_modules", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
    "--disable_tqdm", "true", "--num_threads", "1",
]  # fmt: skip


LLM_SELECTION_SEEDS = (42, 1, 2, 3, 4, 5)


@pytest.mark.slow
def test_llm_selection_influence_against_random(tmp_path):
    """Issue 23.4, six seeds (one pretrained base; six document splits, corruptions and LoRA runs): each method
    keeps the most helpful 50% of the instruction data (within each instruction kind and domain), the same LoRA
    initialisation is retrained on it, and the loss on the response tokens of 120 held-out clean test examples (and of
    the 120 target examples that define the influence) is compared with a random 50% of the same size. The per-seed
    tables and the means are printed; docs/hyperinf.md records them.

    Asserted (what held over the six seeds, with slack): on the target set every method's mean loss is below random's
    by at least 0.05 (measured 0.079-0.109) and every method beats random on at least 4 of 6 seeds (measured 5-6);
    HyperINF's mean target loss is within 0.05 of the best method's (measured 0.006; the best method differs between
    seeds: LiSSA, LiSSA, HyperINF, TracIn, HyperINF, HyperINF); no method's mean held-out loss is more than 0.1 above
    random's (measured: -0.04 to +0.03). Not asserted: any ranking between the influence methods, a held-out gain
    (there is none), detection of the corrupted answers (ROC-AUC 0.42-0.56, chance level). An earlier version ran
    seeds 42, 1, 2 only and asserted that every method beats random on every seed and HyperINF is the best: seed 3
    breaks the first and the second no longer holds on seeds 42, 1, 2 with today's code."""
    methods = ("hyperinf", "datainf", "lissa", "tracin")
    per_seed = []
    base = None
    for seed in LLM_SELECTION_SEEDS:
        out = tmp_path / f"seed{seed}"
        args = LLM_SELECTION_ARGS + ["--seed", str(seed), "--output_dir", str(out)]
        if base is not None:
            args += ["--model_name_or_path", base]
        results = main(args)
        base = base or os.path.join(out, "base")
        per_seed.append(results["selection"])
        aucs = {m: round(results["methods"][m]["auc_corrupted"], 3) for m in methods}
        print(f"seed {seed} AUC(corrupted)", aucs, flush=True)
        print((out / "llm_selection.md").read_text(), flush=True)
    check_llm_selection(per_seed, methods)


def check_llm_selection(per_seed: list[list[dict]], methods) -> None:
    """Print the seed means and assert the measured direction (see the slow test's docstring)."""
    rows = {}
    for selection in per_seed:
        for row in selection:
            rows.setdefault(row["name"], []).append(row)
    test_loss = {name: np.array([r["test"]["loss"] for r in rs]) for name, rs in rows.items()}
    target_loss = {name: np.array([r["target"]["loss"] for r in rs]) for name, rs in rows.items()}
    test_acc = {name: np.array([r["test"]["token_accuracy"] for r in rs]) for name, rs in rows.items()}
    for name in rows:
        print(
            f"{name:<16} test loss {test_loss[name].mean():.4f} ± {test_loss[name].std(ddof=1):.4f} "
            f"[{test_loss[name].min():.4f}, {test_loss[name].max():.4f}]  token acc {test_acc[name].mean():.3f}  "
            f"target loss {target_loss[name].mean():.4f} ± {target_loss[name].std(ddof=1):.4f} "
            f"[{target_loss[name].min():.4f}, {target_loss[name].max():.4f}]  "
            f"corrupted kept {np.mean([r['corrupted_kept'] for r in rows[name]]):.1f}"
        )
    print("best target loss per seed:", [min(methods, key=lambda m: target_loss[m][i]) for i in range(len(per_seed))])
    print("lowest mean test loss:", min(methods, key=lambda m: test_loss[m].mean()))
    print("lowest mean target loss:", min(methods, key=lambda m: target_loss[m].mean()))
    for m in methods:
        assert target_loss[m].mean() <= target_loss["random"].mean() - 0.05, (m, target_loss[m], target_loss["random"])
        assert np.sum(target_loss[m] < target_loss["random"]) >= 4, (m, target_loss[m], target_loss["random"])
        assert test_loss[m].mean() <= test_loss["random"].mean() + 0.1, (m, test_loss[m], test_loss["random"])
    assert target_loss["hyperinf"].mean() <= min(target_loss[m].mean() for m in methods) + 0.05
