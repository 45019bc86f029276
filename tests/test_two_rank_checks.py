"""The 2-rank checks that read ONE `torchrun --nproc_per_node 2` launch of tests/scripts/two_rank_checks.py (each
was a launch of its own; a launch costs every rank ~15 s of imports before its work). The script runs them in turn and
marks each on stdout, so a test whose check did not finish names the check the launch stopped in, with its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import pytest
import torch

from .test_pretrain import FOG_TINY

CHECKS = (
    "fsdp_rank_fingerprints", "loss_window", "eval_rows_once", "whole_model_save", "pretrain_ddp", "grape_fsdp2", "metadata_fsdp2",
    "layer_parallel_fsdp2", "layer_parallel_fsdp2_env", "pretrain_fsdp2",
)  # fmt: skip

FSDP2_SHARDED = [
    "--fsdp", "full_shard auto_wrap", "--fsdp_config",
    json.dumps({"fsdp_version": 2, "transformer_layer_cls_to_wrap": ["FogDecoderLayer"],
                "state_dict_type": "SHARDED_STATE_DICT"}),
]  # fmt: skip
# the train-loss check's runs: logs at step 3 of 4, so step 4's loss is after the last log
TRAIN_LOSS_TINY = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "2", "--num_attention_heads", "2",
    "--block_size", "32", "--max_eval_blocks", "4", "--max_new_tokens", "2", "--model_type", "llama",
    "--fp8_backend", "none", "--vocab_size", "512", "--disable_tqdm", "true", "--max_steps", "4", "--use_cpu", "true",
    "--seed", "3", "--logging_steps", "3", "--report_to", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def _launch(tmp_path_factory):
    return {"out": tmp_path_factory.mktemp("two_rank_checks")}


@pytest.fixture
def finished(_launch, run_two_ranks, in_turn_outcome):
    """`finished(check)`: the launch's output folder once `check` finished on both ranks (the module's one launch,
    made by the first test asking); fails naming the check the launch stopped in otherwise."""
    out = _launch["out"]
    if "proc" not in _launch:
        ddp = [
            *TRAIN_LOSS_TINY, "--per_device_train_batch_size", "2", "--output_dir", out / "pretrain_ddp",
            "--save_strategy", "steps", "--save_steps", "2",  # checkpoint-2: the resume-batch test's
        ]  # fmt: skip
        fsdp2 = [
            "--use_cpu", "true", *FOG_TINY, *FSDP2_SHARDED, "--max_steps", "4",
            "--save_strategy", "steps", "--save_steps", "2", "--output_dir", out / "fsdp",
            # 5 evaluation blocks at eval batch 2: the 2-rank evaluate() counted accelerate's padded repeat of a block
            "--max_eval_blocks", "5", "--per_device_eval_batch_size", "2", "--eval_strategy", "steps",
            "--eval_steps", "4",
        ]  # fmt: skip
        _launch["proc"] = run_two_ranks(
            "tests/scripts/two_rank_checks.py", out, "--ddp", *ddp, "--fsdp2", *fsdp2, timeout=900, check=False
        )

    def check(name):
        proc = _launch["proc"]
        in_turn_outcome(proc, name, CHECKS)
        return out

    return check


@pytest.mark.distributed
def test_fsdp2_sharded_state_dict_run_saves_and_reports_its_own_model(finished):
    """The shipped FSDP2 configs (`fsdp_state_dict_type: SHARDED_STATE_DICT`): transformers' save_model wrote nothing,
    so the reload crashed ("Unrecognized model") or silently evaluated an earlier run's model left in --output_dir.

    The same 2-rank launch first checks `rank_fingerprints` on a bare `fully_shard` model (was: `total[0] += d.sum()`
    on an FSDP2 DTensor raised an AssertionError in DTensor dispatch; tests/scripts/fsdp_rank_fingerprints.py; it was
    a launch of its own in tests/test_data_cli_audit_fixes.py)."""
    from transformers import AutoModelForCausalLM

    from hf_ext.utils import rank_fingerprints

    # rank_fingerprints of a `fully_shard` (DTensor) model: the unsharded model's on both ranks
    result = json.loads((finished("fsdp_rank_fingerprints") / "fsdp_fingerprints.json").read_text())
    assert result["world_size"] == 2 and result["dtensor"] == [True, True], f"fingerprint check: {result}"
    local = result["local_numels"]
    assert local[0] != local[1], f"fingerprint check: not sharded, each rank holds {local}"
    before, after = result["before"], result["after"]
    assert len(after) == 2 and after[0] == after[1] == before[0] == before[1], f"fingerprint check: {before} {after}"

    out = finished("pretrain_fsdp2") / "fsdp"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        assert (out / name).is_file(), name
    checkpoint = sorted(os.listdir(out / "checkpoint-2"))
    assert "pytorch_model_fsdp_0" in checkpoint and "model.safetensors" not in checkpoint  # sharded, as configured
    saved = json.loads((out / "pretrain_results.json").read_text())
    assert saved["world_size"] == 2 and "eval_loss" in saved
    # the folder holds the trained model: the trained (sharded) model's full-tensor fingerprint is the saved one's
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert rank_fingerprints(reloaded)[0] == pytest.approx(saved["rank_fingerprints"][0], rel=1e-6)
    # the step-4 evaluation during training is the final weights' loss the recipe computes once per block
    logged = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    ((step, eval_loss),) = [(h["step"], h["eval_loss"]) for h in logged if "eval_loss" in h]
    assert step == 4 and eval_loss == pytest.approx(saved["eval_loss"], abs=1e-5)


@pytest.mark.distributed
def test_grape_recipe_under_fsdp2_finishes_and_reports_its_saved_models_target_loss(finished):
    """The GRAPE recipe with `--fsdp` (FSDP2, `reweight_method uniform`, which docs/grape.md says works with any
    backend) on 2 ranks: the main process evaluated the held-out targets alone on the FSDP-sharded model, so its first
    forward waited in the parameter all-gather for the other rank, which waited at the end of the run: the launch hung
    (tests/scripts/grape_fsdp2_cpu.py). Now every rank evaluates; the reported target loss is the one-process loss of
    the model the run saved, which `from_pretrained` loads. The launch uses `state_dict_type: SHARDED_STATE_DICT`
    (the shipped FSDP2 accelerate configs'), with which transformers' `save_model` writes no model: the folder had a
    config and a tokenizer but no weights until `GrapeTrainer` gathered the whole state for its final save."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from hf_ext.data import load_corpus
    from hf_ext.grape.data import prepare_target
    from hf_ext.utils.evaluation import causal_lm_eval_loss

    out = finished("grape_fsdp2") / "grape_fsdp2"
    results = json.loads((out / "grape_results.json").read_text())
    assert sorted(results["target_eval_loss"]) == ["t_numeric"]
    # the recipe's evaluation blocks (eval_fraction 0.5, split with --seed 0), rebuilt here in one process
    tokenizer = AutoTokenizer.from_pretrained(out)
    held_out = load_corpus("test").filter(lambda r: r["domain"] == "numeric")
    blocks = prepare_target("t_numeric", held_out, tokenizer, 32)
    n_eval = min(max(1, round(len(blocks) * 0.5)), len(blocks) - 1)
    eval_blocks = blocks.train_test_split(test_size=n_eval, seed=0, shuffle=True)["test"]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert results["target_eval_loss"]["t_numeric"] == pytest.approx(causal_lm_eval_loss(model, eval_blocks), abs=1e-5)


@pytest.mark.distributed
def test_metadata_recipe_under_fsdp2_finishes_and_scores_the_trained_model(finished):
    """The metadata recipe with `--fsdp` (FSDP2) on 2 ranks: the main process computed the final document losses (and
    ran generation) alone on the FSDP-sharded model, whose forward's parameter all-gather met the other rank's next
    collective: gloo aborted the launch (tests/scripts/metadata_fsdp2_cpu.py). Now the main process scores a whole
    copy of the trained weights: its final losses are the last curve points, which every rank computed together on
    the sharded model at the last step."""
    results = json.loads((finished("metadata_fsdp2") / "metadata_fsdp2" / "metadata_results.json").read_text())
    assert results["world_size"] == 2
    curves, final = results["curves"], results["final"]
    assert curves["with URL context"][-1][0] == 2
    assert final["url_model_with_context"] == pytest.approx(curves["with URL context"][-1][1], abs=1e-5)
    assert final["url_model_without_context"] == pytest.approx(curves["URL model, empty context"][-1][1], abs=1e-5)
    assert "baseline" in final and "guidance_example" in results
    # SHARDED_STATE_DICT: both trained models are saved whole (transformers' save_model wrote no weights) and load
    from transformers import AutoModelForCausalLM

    for name in ("url_conditioned", "baseline"):
        model = AutoModelForCausalLM.from_pretrained(finished("metadata_fsdp2") / "metadata_fsdp2" / name)
        assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.distributed
def test_layer_parallel_recipe_fine_tuned_under_fsdp2_finishes_and_saves_its_model(finished):
    """The layer_parallel recipe with `--finetune` and `--fsdp` (FSDP2) on 2 ranks: after fine-tuning, the main
    process evaluated, saved and reloaded the FSDP-sharded model alone; its first forward waited in the parameter
    all-gather for the other rank, which waited at the end of the run: the launch hung
    (tests/scripts/layer_parallel_fsdp2_cpu.py). Now every rank gathers the whole weights and the main process works
    on a plain copy: the saved model reloads with the fine-tuned model's loss."""
    from transformers import AutoModelForCausalLM

    out = finished("layer_parallel_fsdp2") / "layer_parallel_fsdp2"
    results = json.loads((out / "results.json").read_text())
    assert results["chosen"]["pairs"] == 1 and results["reload_matches"] is True
    assert results["reloaded_eval"]["loss"] == pytest.approx(results["finetuned_eval"]["loss"], rel=1e-5)
    assert len(results["finetune_loss_curve"]) >= 1
    model = AutoModelForCausalLM.from_pretrained(out / "layer_parallel_model")
    assert type(model).__name__ == "LayerParallelForCausalLM" and model.config.effective_depth == 3


@pytest.mark.distributed
def test_layer_parallel_source_pretrained_under_accelerate_fsdp2_environment_equals_one_process(finished, tmp_path):
    """fs49: the layer_parallel recipe under an accelerate config with FSDP (set in the environment, as
    `accelerate launch --config_file` does) pre-trains its source model sharded, then sweeps and converts a whole one
    (tests/scripts/layer_parallel_fsdp2_env_cpu.py). Before, the pre-training Trainer (whose own arguments name no
    FSDP) was sharded by accelerate's environment and its sharded model went to the sweep: the main process stopped
    with "TypeError: `model` holds linear layers that are not plain nn.Linear (lm_head is FSDPLinear) ..." and source/
    held no weights (SHARDED_STATE_DICT)."""
    from safetensors.torch import load_file

    from hf_ext.recipes.layer_parallel import main

    folder = finished("layer_parallel_fsdp2_env") / "layer_parallel_fsdp2_env"
    two, one = folder / "two", tmp_path / "one"
    argv = json.loads((folder / "argv.json").read_text())
    main([*argv, "--per_device_train_batch_size", "8", "--output_dir", str(one)])  # the same global batch
    two_results = json.loads((two / "results.json").read_text())
    one_results = json.loads((one / "results.json").read_text())
    assert two_results["world_size"] == 2
    assert two_results["source_eval"]["loss"] == pytest.approx(one_results["source_eval"]["loss"], abs=1e-5)
    assert two_results["chosen"] == one_results["chosen"]
    # source/ holds the pre-trained weights (a SHARDED_STATE_DICT save wrote none there)
    two_weights = load_file(two / "source" / "model.safetensors")
    one_weights = load_file(one / "source" / "model.safetensors")
    assert sorted(two_weights) == sorted(one_weights)
    assert max(float((two_weights[k] - one_weights[k]).abs().max()) for k in one_weights) < 1e-5


@pytest.mark.distributed
def test_neuralgrok_and_private_trainers_save_a_whole_model_under_fsdp2_sharded_state_dict(finished):
    """fs49: NeuralGrokTrainer and PrivateTrainer under FSDP2 with `fsdp_state_dict_type: SHARDED_STATE_DICT` write a
    whole model at their final `save_model` (hf_ext.utils.fsdp_save.WholeModelSaveMixin). Before, transformers'
    `save_model` wrote nothing there, not even the folder (tests/scripts/whole_model_save_fsdp2_cpu.py)."""
    ranks = json.loads((finished("whole_model_save") / "whole_model_save.json").read_text())
    assert len(ranks) == 2
    for rank in ranks:
        for name, r in rank.items():
            assert r["fsdp"] and r["moved"] > 1e-4, (name, r)  # sharded, and trained: not a vacuous comparison
            assert "pytorch_model_fsdp_0" in r["checkpoint"], (name, r)  # checkpoints stay sharded, as configured
            assert r["final"] is not None and "model.safetensors" in r["final"], (name, r)
            assert r["saved_diff"] == 0.0, (name, r)
    assert ranks[0] == ranks[1]


@pytest.mark.distributed
def test_two_ranks_resume_between_two_logs_logs_the_uninterrupted_losses(finished):
    """tests/test_logging_window_resume.py's check on 2 ranks: each rank saves its own open loss window with
    checkpoint-3 (between the logs of steps 2 and 4) and the resumed run logs the uninterrupted run's losses."""
    result = json.loads((finished("loss_window") / "loss_window_two_ranks.json").read_text())
    assert result["world_size"] == 2
    first, second = result["windows"]  # each rank saved its own sum of step 3's loss and the same mean of both
    assert [step for step, _ in result["full"]] == [2, 4, 6]
    for (step, want), (got_step, got) in zip(result["full"], result["resumed"], strict=True):
        assert got_step == step and got == pytest.approx(want, rel=1e-7, abs=0), step
    losses = [loss for rank in result["train_loss"] for loss in rank.values()]
    assert None not in losses and losses == pytest.approx([losses[0]] * 4, rel=1e-6)
    assert (first["process_index"], second["process_index"]) == (0, 1) and first["tr_loss"] != second["tr_loss"]
    assert first["tr_loss_mean"] == second["tr_loss_mean"] == pytest.approx((first["tr_loss"] + second["tr_loss"]) / 2)


@pytest.mark.distributed
def test_two_rank_eval_loss_equals_one_process(finished, repo_root):
    """A multi-process `Trainer.evaluate()` of hf_ext's Trainers counts every evaluation row once: accelerate pads the
    last batch of the ranks with repeated rows, and transformers' eval_loss kept their losses (2 ranks differed from
    one process: pretrain's logged eval_loss, layer_parallel's finetune_eval_loss_curve)."""
    sys.path.insert(0, os.path.join(repo_root, "tests", "scripts"))
    from eval_rows_once import CASES, ROWS, eval_losses

    out = finished("eval_rows_once")
    two = json.loads((out / "eval_rows_once.json").read_text())
    assert two["world_size"] == 2
    rank0, rank1 = two["ranks"]
    assert rank0 == rank1  # every rank reports the same metrics
    one = eval_losses(str(out / "one"))
    assert len({round(one[c]["eval_loss"], 5) for c in CASES}) == 1  # the same model and rows in every case
    # the setup pads: transformers' own Trainer differs from one process on 2 ranks
    assert abs(rank0["plain_trainer"]["eval_loss"] - one["plain_trainer"]["eval_loss"]) > 1e-4
    for case in CASES[1:]:
        assert rank0[case]["eval_loss"] == pytest.approx(one[case]["eval_loss"], abs=1e-6), case
    assert rank0["mixin_trainer_with_metrics"]["eval_rows"] == one["mixin_trainer_with_metrics"]["eval_rows"] == ROWS


@pytest.mark.distributed
def test_pretrain_two_ranks_train_loss_equals_one_process_at_double_batch(finished, tmp_path):
    """tests/test_recipes_train_loss_ranks.py's defect on a real launch: pretrain's `train_loss` on 2 ranks x batch 2
    equals one process x batch 4, also with step 4 after the last log (it was rank 0's tail)."""
    from hf_ext.recipes.pretrain import main

    one = main([*TRAIN_LOSS_TINY, "--per_device_train_batch_size", "4", "--output_dir", str(tmp_path / "one")])
    two = json.loads((finished("pretrain_ddp") / "pretrain_ddp" / "pretrain_results.json").read_text())
    assert two["world_size"] == 2
    assert [step for step, _ in two["loss_curve"]] == [step for step, _ in one["loss_curve"]] == [3]  # one log
    assert [loss for _, loss in two["loss_curve"]] == pytest.approx([loss for _, loss in one["loss_curve"]], rel=1e-6)
    # the step-4 tail is rank-local; it was 2.3e-3 off
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-6, abs=0)


@pytest.mark.distributed
def test_one_process_resume_of_a_two_rank_checkpoint_warns_of_the_halved_batch(finished, tmp_path, caplog):
    """A checkpoint written by 2 ranks records the total train batch over both (2 x 2 = 4, `processes` 2), so resuming
    it in one process at the same per-device batch (a total of 2) warns that the checkpoint's steps are taken as half
    their samples; the record of a rank-local batch (2) would have said nothing."""
    from hf_ext.recipes.pretrain import main
    from hf_ext.utils.resume import read_train_batch_record

    checkpoint = finished("pretrain_ddp") / "pretrain_ddp" / "checkpoint-2"
    record = read_train_batch_record(str(checkpoint))
    assert (record["total_train_batch_size"], record["processes"], record["per_device_train_batch_size"]) == (4, 2, 2)
    args = [*TRAIN_LOSS_TINY, "--per_device_train_batch_size", "2", "--output_dir", str(tmp_path / "one")]
    with caplog.at_level(logging.WARNING, logger="hf_ext.utils.resume"):
        main([*args, "--resume_from_checkpoint", str(checkpoint)])
    said = [r.getMessage() for r in caplog.records if "total train batch" in r.getMessage()]
    assert len(said) == 1 and "trained at a total train batch of 4 samples" in said[0], said
    assert "x 2 processes); this run's is 2" in said[0] and "--gradient_accumulation_steps 2" in said[0]
