"""The pretrain and warmup recipes record, in the run's (the arm's) folder, the flags that define its data and model
(`pretrain_run.json`, `warmup_run.json`), and a resume with other values is refused by flag name before anything is
written. Before, another --block_size, --train_file or --num_attention_heads of the same width loaded the checkpoint
and went on training silently on other blocks, or as another model, and reported the mix as one run."""

import os
import shutil

import pytest

from hf_ext.recipes import pretrain, warmup

PRETRAIN = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "4",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--max_new_tokens", "2",
    "--logging_steps", "1", "--model_type", "llama", "--vocab_size", "512", "--save_strategy", "steps",
    "--save_steps", "1", "--max_steps", "2", "--disable_tqdm", "true",
]  # fmt: skip
WARMUP = [
    "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2", "--vocab_size", "512",
    "--block_size", "32", "--per_device_train_batch_size", "4", "--max_eval_blocks", "4", "--metrics_every", "1",
    "--logging_steps", "1", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "steps",
    "--save_steps", "1", "--max_steps", "2", "--arms", "adamw_warmup",
]  # fmt: skip


def _snapshot(root):
    return {os.path.join(d, f): os.path.getmtime(os.path.join(d, f)) for d, _, files in os.walk(root) for f in files}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-step run of each recipe whose last checkpoint is gone (as if killed after step 1)."""
    root = tmp_path_factory.mktemp("records")
    pretrain.main(PRETRAIN + ["--output_dir", str(root / "pretrain")])
    shutil.rmtree(root / "pretrain" / "checkpoint-2")
    warmup.main(WARMUP + ["--output_dir", str(root / "warmup")])
    shutil.rmtree(root / "warmup" / "adamw_warmup" / "checkpoint-2")
    return root


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num_attention_heads", "2"], r"--num_attention_heads 2 \(the interrupted run used 4\)"),
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\).*Resume with --block_size 32"),
        (["--max_eval_blocks", "8"], r"--max_eval_blocks 8 \(the interrupted run used 4\)"),
    ],
)
def test_pretrain_resume_with_other_data_or_model_is_refused_before_writing(runs, argv, match):
    out = runs / "pretrain"
    before = _snapshot(out)
    with pytest.raises(ValueError, match=match):
        pretrain.main(PRETRAIN + argv + ["--output_dir", str(out), "--resume_from_checkpoint", "true"])
    assert _snapshot(out) == before


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--num_attention_heads", "4"], r"--num_attention_heads 4 \(the interrupted run used 2\)"),
        (["--block_size", "16"], r"--block_size 16 \(the interrupted run used 32\)"),
        (["--architecture", "gpt2"], r"--architecture gpt2 \(the interrupted run used llama\)"),
    ],
)
def test_warmup_resume_with_other_data_or_model_is_refused_before_writing(tmp_path, runs, argv, match):
    out = runs / "warmup"
    before = _snapshot(out)
    with pytest.raises(ValueError, match=match):
        warmup.main(WARMUP + argv + ["--output_dir", str(out), "--resume_from_checkpoint", "last"])
    assert _snapshot(out) == before
    named = tmp_path / "other"  # a checkpoint named on the command line: checked against its own run's record
    with pytest.raises(ValueError, match=match):
        warmup.main(WARMUP + argv + ["--output_dir", str(named), "--resume_from_checkpoint",
                                     str(out / "adamw_warmup" / "checkpoint-1")])  # fmt: skip
    assert not named.exists()


def test_the_same_flags_resume(runs):
    result = pretrain.main(PRETRAIN + ["--output_dir", str(runs / "pretrain"), "--resume_from_checkpoint", "true"])
    assert (runs / "pretrain" / "checkpoint-2").is_dir() and result["perplexity"] > 0
    result = warmup.main(WARMUP + ["--output_dir", str(runs / "warmup"), "--resume_from_checkpoint", "last"])
    assert result["adamw_warmup"]["resumed_from"].endswith("checkpoint-1")
