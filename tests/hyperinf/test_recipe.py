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
