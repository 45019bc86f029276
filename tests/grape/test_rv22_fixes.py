"""rv22 findings in the grape recipe's run record (`grape_run.json`).

F1: a checkpoint of one run resumed into an --output_dir holding the checkpoints of another run trained beside them
(a later resume of that folder continued the newest of either run, checked against one run's record); it is refused
before any work. F2: --target_files (a `name=path,...` list) was compared as raw text, so the same target file given
relative in the fresh run and absolute on the resume was refused (and the same relative string naming another file,
from another working directory, accepted); each path is now compared resolved, the names as given.
"""

import json
import os
import shutil

import pytest
import torch

from hf_ext.recipes._common import check_run_record, write_run_record
from hf_ext.recipes.grape import RUN_RECORD_NAME, main

WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
RECIPE = ["--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
          "--block_size", "32", "--per_device_train_batch_size", "4", "--reweight_batch_size", "4",
          "--reweight_mini_batch_size", "2", "--reweight_domains_every", "1", "--reweight_tasks_every", "1",
          "--train_file", "src.jsonl", "--disable_tqdm", "true", "--use_cpu", "true", "--logging_steps", "1",
          "--seed", "3", "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1"]  # fmt: skip


def _write_data(folder):
    with open(folder / "src.jsonl", "w") as f:
        for i in range(80):
            text = " ".join(WORDS[(i + j) % 12] for j in range(60))
            f.write(json.dumps({"text": text, "domain": ["d1", "d2"][i % 2]}) + "\n")
    (folder / "tgt.txt").write_text("\n".join(" ".join(WORDS[(i * 3 + j) % 12] for j in range(80)) for i in range(20)))


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A 2-step run with --target_files t=tgt.txt (relative), killed after step 1; returns (data folder, run)."""
    root = tmp_path_factory.mktemp("grape_rv22")
    _write_data(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        main([*RECIPE, "--target_files", "t=tgt.txt", "--output_dir", str(root / "run")])
    finally:
        os.chdir(cwd)
    shutil.rmtree(root / "run" / "checkpoint-2")
    return root, root / "run"


def _snapshot(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files}


def test_the_same_target_file_given_absolute_resumes(interrupted, monkeypatch):
    root, run = interrupted
    monkeypatch.chdir(root)
    record = json.loads((run / RUN_RECORD_NAME).read_text())
    assert record["target_files"] == f"t={os.path.realpath(root / 'tgt.txt')}"  # recorded resolved, name kept
    main([*RECIPE, "--target_files", f"t={root / 'tgt.txt'}", "--output_dir", str(run), "--resume_from_checkpoint",
          "true"])  # fmt: skip
    assert (run / "checkpoint-2").is_dir()


def test_target_files_are_compared_resolved(tmp_path, monkeypatch):
    """Each path of the list resolved; the names and the paths that name no file compared as given."""
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
        (folder / "t.txt").write_text("text")
    monkeypatch.chdir(first)
    write_run_record(str(tmp_path / "run"), "r.json", {"target_files": " t = t.txt ,u=gone.txt,"})
    assert json.loads((tmp_path / "run" / "r.json").read_text())["target_files"] == (
        f"t={os.path.realpath(first / 't.txt')},u=gone.txt"
    )
    check_run_record(str(tmp_path / "run"), "r.json", {"target_files": f"t={first / 't.txt'},u=gone.txt"}, "x")
    with pytest.raises(ValueError, match=r"--target_files s=.*a/t.txt,u=gone.txt \(the interrupted run used t="):
        check_run_record(str(tmp_path / "run"), "r.json", {"target_files": "s=t.txt,u=gone.txt"}, "x")
    monkeypatch.chdir(second)  # the same relative string names another file here
    with pytest.raises(ValueError, match=r"--target_files t=.*b/t.txt,u=gone.txt \(the interrupted run used t=.*a/t"):
        check_run_record(str(tmp_path / "run"), "r.json", {"target_files": "t=t.txt,u=gone.txt"}, "x")
    # a record written before the paths were recorded resolved: its relative paths are resolved where it is checked
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "r.json").write_text(json.dumps({"target_files": "t=t.txt"}))
    check_run_record(str(tmp_path / "old"), "r.json", {"target_files": f"t={second / 't.txt'}"}, "x")


def test_a_checkpoint_resumed_into_a_folder_of_another_runs_checkpoints_is_refused_before_writing(
    interrupted, tmp_path, monkeypatch
):
    root, run = interrupted
    monkeypatch.chdir(root)
    other = tmp_path / "other"
    shutil.copytree(run / "checkpoint-1", other / "checkpoint-1")  # another run's checkpoint left in the folder
    before = _snapshot(other)
    with pytest.raises(ValueError, match=r"is resumed into --output_dir .*which holds checkpoints of another run"):
        main([*RECIPE, "--target_files", "t=tgt.txt", "--output_dir", str(other), "--resume_from_checkpoint",
              str(run / "checkpoint-1")])  # fmt: skip
    assert _snapshot(other) == before


# ---- the reweighting loss of a float64 model (rv22 note) ----------------------------------------------------------------
# transformers' causal LM loss casts the logits to float32 (`logits.float()`), so a float64 model's GRAPE losses, and the
# gradients taken through them, were float32 (2e-7 off a float64 reference) although the rest of its reweighting runs
# in float64 (`_at_least_float32`).


def _brute_force_loss(model, batch) -> torch.Tensor:
    """Mean over the scored tokens of -log p(token t+1 | tokens <= t), the log-softmax written out in float64."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits[:, :-1].double()
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    log_z = logits.logsumexp(-1)
    picked = logits.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return ((log_z - picked) * mask).sum() / mask.sum()


def test_a_float64_models_reweighting_loss_and_gradient_are_float64(synthetic, grape_helpers, tmp_path):
    from grape_synthetic import quick_grape_args

    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3).to(torch.float64),
        args=quick_grape_args(str(tmp_path), reweight_method="grape", max_grad_norm=0.0),
        train_dataset=train,
        target_datasets=targets,
    )
    model = trainer.model
    batch = trainer._domain_batch(0, trainer._rng("domain"), 2)
    flat, loss = trainer._flat_grad(batch)
    reference = _brute_force_loss(model, batch)
    params = [p for p in model.parameters() if p.requires_grad]
    expected = torch.cat([g.reshape(-1) for g in torch.autograd.grad(reference, params)])
    assert flat.dtype == torch.float64
    assert abs(loss - float(reference)) < 1e-12
    torch.testing.assert_close(flat, expected, rtol=1e-10, atol=1e-13)
    # the model's own loss (transformers: float32) is measurably further off, so the check above can fail
    assert abs(float(model(**batch).loss) - float(reference)) > 1e-9
    # the task loss with the log transform (grape's target gradient) goes through the same loss
    flat, _ = trainer._flat_grad(batch, torch.log)
    expected = torch.cat(
        [g.reshape(-1) for g in torch.autograd.grad(torch.log(_brute_force_loss(model, batch)), params)]
    )
    torch.testing.assert_close(flat, expected, rtol=1e-10, atol=1e-13)


def test_a_model_loss_that_is_not_the_cross_entropy_is_kept(synthetic, grape_helpers, tmp_path, caplog):
    """A model whose loss adds a term to the next-token cross-entropy (an auxiliary loss): its own loss is used."""
    from types import SimpleNamespace

    from grape_synthetic import quick_grape_args

    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=3).to(torch.float64),
        args=quick_grape_args(str(tmp_path), reweight_method="grape"),
        train_dataset=train,
        target_datasets=targets,
    )
    batch = trainer._domain_batch(0, trainer._rng("domain"), 2)
    out = trainer.model(**batch)
    with caplog.at_level("WARNING", logger="hf_ext.grape.trainer"):
        loss = trainer._reweighting_loss(SimpleNamespace(loss=out.loss + 0.5, logits=out.logits), batch["labels"])
    assert float(loss) == pytest.approx(float(out.loss) + 0.5, abs=1e-6)
    assert "not the next-token cross-entropy" in caplog.text
