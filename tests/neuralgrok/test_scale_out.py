"""NeuralGrok on 2 gloo ranks. Every test here reads ONE `torchrun --nproc_per_node 2` launch of
scripts/scale_out_all.py (a launch costs each rank ~10 s of imports, more than most checks), which runs the checks of
scale_out_neuralgrok.py, fsdp2_grokfast_resume.py, ddp_amplifier_broadcast.py, ddp_neuralgrok.py and two recipe runs
in turn in one process group; a failed launch names the check that failed (`scale_out_all: <check>` on stderr).

- Under FSDP2 (`fully_shard`) and DDP the gradient transforms (the amplifier's per-tensor softmax and norm, the
  normalisation control, Grokfast) and the logged AGE match one process on the whole batch; the outer step under DDP
  transforms the global batch's gradient as one process does; FSDP2 is refused by the outer step. NeuralGrokTrainer
  with Grokfast under FSDP2 checkpoints the whole filter state and resumes exactly.
- An amplifier that differs across the ranks is replaced by rank 0's (audit ng16).
- NeuralGrokTrainer keeps the amplifier and the model identical on the ranks and logs the global batch's accuracy,
  with both outer gradients; the recipe writes its results on rank 0 only.
- The end of a training epoch on 2 ranks (audit rc13 #4, see test_recipe_epoch_end.py): with
  `--dataloader_drop_last true` the recipe on 2 ranks equals one process at the same global batch across epochs; by
  default it keeps the partial batch and says how the ranks differ."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_ext.recipes.neuralgrok import main

from .test_recipe_epoch_end import _EVAL, _TINY, _curves

# the launch's recipe runs (the neuralgrok recipe at p=11 on 2 ranks x 8 rows, into OUT_DIR/<name>); each test runs
# its one-process counterpart at 16 rows
RECIPE_RUNS = {
    "drop_last": [
        *_TINY,
        *_EVAL,
        "--methods",
        "none,neuralgrok",
        "--max_steps",
        "7",
        "--dataloader_drop_last",
        "true",
    ],
    "default": [*_TINY, "--methods", "none", "--max_steps", "4", "--eval_strategy", "no"],
}


@pytest.fixture(scope="module")
def _launch(tmp_path_factory):
    return {"out": tmp_path_factory.mktemp("scale_out")}


@pytest.fixture
def launch(_launch, run_two_ranks, launch_failure):
    """`launch(check)`: (OUT_DIR, CompletedProcess) of the module's one launch of scale_out_all.py (made by the first
    test asking), once both ranks passed `check` (one of scale_out_all.py's check names). Fails, naming the check,
    when it did not pass on both ranks or was not reached (an earlier check failed), without a second launch."""

    def result(check):
        out = _launch["out"]
        if "proc" not in _launch:
            runs = {name: [*argv, "--per_device_train_batch_size", "8", "--output_dir", str(out / name)]
                    for name, argv in RECIPE_RUNS.items()}  # fmt: skip
            (out / "recipe_runs.json").write_text(json.dumps(runs))
            _launch["proc"] = run_two_ranks("tests/neuralgrok/scripts/scale_out_all.py", out, timeout=600, check=False)
        proc = _launch["proc"]
        if not all((out / "passed" / f"{check}.rank{rank}").exists() for rank in (0, 1)):
            started = f"scale_out_all: {check}\n" in proc.stderr
            pytest.fail(
                f"the two-rank check {check!r} "
                + ("did not pass on both ranks" if started else "was not reached (an earlier check failed)")
                + f" (launch exit code {proc.returncode}):\n{launch_failure(proc.stderr)}"
            )
        if check == "ddp_neuralgrok recompute":  # the last check, whose recipe ends the process group
            assert proc.returncode == 0, launch_failure(proc.stderr)
        return out, proc

    return result


def printed(out, name):
    """What both ranks wrote to stdout during the launch's recipe run `name`."""
    return "".join((out / f"{name}.stdout_rank{rank}.txt").read_text() for rank in (0, 1))


@pytest.mark.distributed
def test_gradient_transforms_under_fsdp2_and_ddp_match_one_process(launch):
    out, _ = launch("scale_out")
    rank0, rank1 = json.loads((out / "scale_out_neuralgrok.json").read_text())
    for r in (rank0, rank1):
        for name in ("neuralgrok", "neuralgrok_ablation", "normalize", "grokfast_ema"):
            res = r[name]
            assert res["param_type"] == "DTensor" and res["moved"] > 1e-3, name
            assert res["fsdp2"] < 1e-5, (name, res)
            assert res["ddp"] < 1e-5, (name, res)
            assert res["fsdp2_metrics_rel"] < 1e-5, (name, res)  # age_raw / age_transformed over all shards
        for name, error in r["tiny_sharded_norm_error"].items():  # |g| ~ 1e-25: norm c, not the eps floor's 1e7
            assert error < 1e-5, (name, error)
        assert r["outer_ddp"]["moved"] > 1e-3 and r["outer_ddp"]["ddp"] < 1e-5, r["outer_ddp"]
        assert r["outer_fsdp2_error"] and "FSDP2" in r["outer_fsdp2_error"]


@pytest.mark.distributed
def test_grokfast_under_fsdp2_checkpoints_and_resumes_exactly(tmp_path, launch):
    """The Grokfast buffers are shards of their parameters (DTensors) under FSDP2: rank 0 handed them to safetensors
    at the first checkpoint ("Attempted to access the data pointer on an invalid python storage") while rank 1 waited
    in the next collective, and rank 0's shards alone would not have been the state. Now every rank gathers the whole
    buffers, rank 0 writes them, and each rank re-shards them on resume: the resumed run is the uninterrupted one."""
    from hf_ext.neuralgrok import NeuralGrokConfig, NeuralGrokTrainer

    out, proc = launch("fsdp2_grokfast_resume")
    assert "terminate called" not in proc.stderr
    ranks = json.loads((out / "fsdp2_grokfast_resume.json").read_text())
    assert len(ranks) == 2
    for r in ranks:
        for mode, res in r.items():
            assert res["fsdp"] and res["param_type"] == res["buffer_type"] == "DTensor", (mode, res)
            assert res["moved"] > 1e-3 and res["buffer_norm"] > 1e-2, (mode, res)  # not a vacuous comparison
            assert res["saved_types"] == ["Tensor"] and res["saved_vs_step_2"] == 0.0, (mode, res)
            assert res["saved_num_transforms"] == 2, (mode, res)
            assert res["one_process_types"] == ["Tensor"] and res["one_process_vs_step_2"] == 0.0, (mode, res)
            assert len(res["losses"]) == 2 and res["resumed_losses"] == res["losses"], (mode, res)
            assert res["resume_param_diff"] == 0.0 and res["resume_state_diff"] == 0.0, (mode, res)
            assert res["resume_num_transforms"] == 4 and res["resumed_buffers_sharded"], (mode, res)
    assert ranks[0] == ranks[1]

    # the whole trainer in one process: transformers refuses the FSDP checkpoint's model files, before any step
    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=16, tie_word_embeddings=False,
    )  # fmt: skip
    ids = torch.randint(0, 64, (16, 8), generator=torch.Generator().manual_seed(0)).tolist()
    args = NeuralGrokConfig(
        output_dir=str(tmp_path / "one"), per_device_train_batch_size=4, max_steps=4, learning_rate=1e-2,
        warmup_steps=0, gradient_transform="grokfast_ema", grokfast_window=3, grokfast_warmup=False,
        track_entropy=False, track_train_accuracy=False, use_cpu=True, report_to="none", disable_tqdm=True,
        save_strategy="no",
    )  # fmt: skip
    trainer = NeuralGrokTrainer(
        model=LlamaForCausalLM(cfg), args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids})
    )
    with pytest.raises(ValueError, match="only supported when using PyTorch FSDP"):
        trainer.train(resume_from_checkpoint=str(out / "grokfast_ema" / "run" / "checkpoint-2"))
    assert trainer.state.global_step == 0


@pytest.mark.distributed
def test_two_ranks_take_rank_0s_amplifier(launch):
    """An `amplifier=` built after a rank-dependent seed differed on the two ranks: each transformed the same
    all-reduced gradient with its own amplifier and the DDP replicas drifted apart silently (amplifier 1.6 apart, the
    model 3e-05 after 4 steps). Now both ranks train with rank 0's, bit for bit the run with rank 0's amplifier on
    both, and a resume with yet other per-rank amplifiers ends where the uninterrupted run does."""
    _, proc = launch("amplifier_broadcast")
    assert proc.stdout.count(" broadcast: OK") == 2  # ddp_amplifier_broadcast.py's comparisons held on both ranks


@pytest.mark.distributed
@pytest.mark.parametrize("outer_gradient", ["recompute", "next_step"])
def test_two_ranks_keep_amplifier_identical(tmp_path, launch, repo_root, outer_gradient):
    """2 ranks keep the amplifier and the model identical, and train the amplifier one process at 8 rows trains, bit
    for bit (each rank's outer step transforms the global batch's gradient; without its all-reduce they were up to
    8.9e-05 off). They log the `train_accuracy` of the global batch, as Trainer logs its loss: 2 ranks x 4 rows log
    what one process at 8 rows logs, and checkpoint the same window (each
    rank logged its own rows' accuracy, 0.25 and 0.0 where the global batch had 0.125, and the checkpoint held rank
    0's). A 2-rank resume from a checkpoint between two logs logs what the uninterrupted run did. The neuralgrok recipe
    on 2 ranks clears and writes its results and prints its tables on rank 0 only (every rank did, and the results
    file held the curves and timings of the rank that renamed its file last). With rows of 1 to 3 labelled tokens
    (float64), 2 ranks x 4 rows train the amplifier one process at 8 rows trains (outer batches of 4 and of 8 rows)."""
    import importlib.util
    import json

    launched, proc = launch(f"ddp_neuralgrok {outer_gradient}")
    assert proc.stdout.count(f" {outer_gradient}: OK") == 2
    launched = launched / "trainer" / outer_gradient  # the 2-rank run's files; tmp_path: this test's one-process runs

    def accuracies(history):
        return {e["step"]: e["train_accuracy"] for e in history if "train_accuracy" in e}

    def logged(path):
        return accuracies(json.loads(path.read_text()))

    def window(folder):
        return json.loads((folder / "checkpoint-3" / "neuralgrok_state.json").read_text())["train_accuracy_counts"]

    path = os.path.join(repo_root, "tests", "neuralgrok", "scripts", "ddp_neuralgrok.py")
    spec = importlib.util.spec_from_file_location("ddp_neuralgrok", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    one = script.make_trainer(str(tmp_path / "one"), outer_gradient, batch_size=8)  # one process, both ranks' rows
    one.train()
    expected = accuracies(one.state.log_history)
    assert sorted(expected) == [2, 4]
    for rank in (0, 1):
        assert logged(launched / f"log_rank{rank}.json") == expected, rank
    assert window(launched) == window(tmp_path / "one")
    # every rank's outer step transforms the gradient of the whole global batch, as one process on it does: without
    # the all-reduce of that gradient (each rank transforming its own micro-batch's) the ranks still agreed with each
    # other, but their amplifier was up to 8.9e-05 off the one-process run's (which the 2 ranks match bit for bit)
    two = torch.load(launched / "amplifier_rank0.pt", weights_only=True)
    reference = one.amplifier.state_dict()
    assert sorted(two) == sorted(reference)
    off = {name: float((two[name] - tensor.detach().cpu()).abs().max()) for name, tensor in reference.items()}
    if outer_gradient == "recompute":
        assert all(torch.equal(two[name], tensor.detach().cpu()) for name, tensor in reference.items()), off
    else:
        # next_step's g_hat is the real step's gradient: the 2 ranks' all-reduced mean and the 8-row gradient differ
        # in the last bits (1e-7), which the amplifier shows at some virtual lrs (1.9e-09 on one bias with the lr of
        # the last real step, 0 with the following step's lr used before ng16); far below the 8.9e-05 above
        assert max(off.values()) < 1e-6, off
    if outer_gradient != "recompute":
        return
    for rank in (0, 1):
        assert logged(launched / "resumed" / f"log_rank{rank}.json") == expected, rank
    # the 2-rank checkpoint-3 resumed in one process at 8 rows (both ranks' rows): the uninterrupted run's logs (the
    # accuracy window and loss windows of both ranks come back as their sum / mean) and its amplifier (float32 model:
    # the 2-rank and one-process gradients differ in the last bits)
    alone = script.make_trainer(str(tmp_path / "alone"), outer_gradient, batch_size=8)
    alone.train(resume_from_checkpoint=str(launched / "checkpoint-3"))
    assert accuracies(alone.state.log_history) == expected
    resumed_amplifier = {k: v.detach().cpu() for k, v in alone.amplifier.state_dict().items()}
    two = torch.load(launched / "amplifier_rank0.pt", weights_only=True)
    assert max(float((two[name] - tensor).abs().max()) for name, tensor in resumed_amplifier.items()) < 1e-6
    # rows with 1 to 3 labelled tokens (float64): the ranks' and micro-batches' token counts differ, and the outer set
    # is cut into batches of 4 rows on 2 ranks, of 8 in one process. The outer loss, the token mean of the whole outer
    # set, does not depend on that: the amplifiers agree (they were 1e-4 apart while each outer batch was weighted by
    # its rows)
    two = torch.load(launched / "amplifier_unequal_rank0.pt", weights_only=True)
    one = script.make_trainer(str(tmp_path / "one_unequal"), outer_gradient, batch_size=8, unequal_labels=True)
    one.train()
    for name, tensor in one.amplifier.state_dict().items():
        torch.testing.assert_close(
            two[name], tensor.detach().cpu(), rtol=0, atol=1e-12, msg=lambda text, name=name: f"{name}: {text}"
        )
    # and the model: 2 ranks x 4 rows (different token counts, averaged over the ranks by transformers) train the
    # parameters one process trains at 8 rows (5.5e-12 apart in float64)
    two_model = torch.load(launched / "model_unequal_rank0.pt", weights_only=True)
    for name, tensor in one.model.state_dict().items():
        torch.testing.assert_close(
            two_model[name], tensor.detach().cpu(), rtol=0, atol=1e-10, msg=lambda text, name=name: f"{name}: {text}"
        )
    calls = [json.loads((launched / f"recipe_calls_rank{rank}.json").read_text()) for rank in (0, 1)]
    assert calls[0]["write_outputs"] == calls[0]["clear_previous_results"] == 1
    assert calls[1]["write_outputs"] == calls[1]["clear_previous_results"] == 0
    results = json.loads((launched / "recipe" / "neuralgrok_results.json").read_text())
    curve = results["methods"]["neuralgrok"]["runs"][0]["curves"]["train_accuracy"]
    assert curve == calls[0]["train_accuracy"] == calls[1]["train_accuracy"]
    assert proc.stdout.count("curves: ") == 1  # the tables and the paths of the plots, printed once


@pytest.mark.distributed
def test_two_ranks_equal_one_process_across_epochs_with_drop_last(tmp_path, launch):
    """55 training rows (54 for neuralgrok's D_inner) at a global batch of 16: 3 steps per epoch, so 7 steps cross two
    epoch boundaries. The recipe run `drop_last` of the launch, 2 ranks x 8 rows, against one process at 16 rows."""
    out, _ = launch("recipe_run drop_last")
    one = main(
        [*RECIPE_RUNS["drop_last"], "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path / "one")]
    )
    assert "note:" not in printed(out, "drop_last")
    two = json.loads((out / "drop_last" / "neuralgrok_results.json").read_text())
    for method in ("none", "neuralgrok"):
        a, b = _curves(one, method), _curves(two, method)
        assert a["train_step"] == b["train_step"] == list(range(1, 8))
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
        assert b["train_accuracy"] == a["train_accuracy"]
        assert a["eval_step"] == b["eval_step"] == [2, 4, 6, 7]  # the whole test split is evaluated
        assert b["test"] == pytest.approx(a["test"], abs=1e-12)


@pytest.mark.distributed
def test_two_ranks_by_default_keep_the_partial_batch_and_say_how_they_differ(tmp_path, launch):
    """The recipe run `default` of the launch (no --dataloader_drop_last), 2 ranks x 8 rows, against one process at 16
    rows."""
    out, _ = launch("recipe_run default")
    one = main([*RECIPE_RUNS["default"], "--per_device_train_batch_size", "16", "--output_dir", str(tmp_path / "one")])
    stdout = printed(out, "default")
    assert stdout.count("note: 55 training rows") == 1  # printed by the main process only
    assert "last 7 rows plus 9 rows repeated" in stdout
    a = _curves(one, "none")
    b = _curves(json.loads((out / "default" / "neuralgrok_results.json").read_text()), "none")
    assert b["loss"][:3] == pytest.approx(a["loss"][:3], rel=1e-5)  # the first epoch: the same rows
    assert b["loss"][3] != pytest.approx(a["loss"][3], rel=1e-3)  # its last step: 7 rows alone vs 7 + 9 repeated
    for accuracy, rows in ((a["train_accuracy"][3], 7), (b["train_accuracy"][3], 16)):  # logged to 4 digits
        assert accuracy * rows == pytest.approx(round(accuracy * rows), abs=2e-3)
