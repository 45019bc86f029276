"""hyperinf, federated and compliance: a run refused for a bad value leaves an earlier run's results as they were.

Each of these values was found only after the earlier run's report files had been removed (by the tokenizer, the
data or the `--train_models` blocks); hyperinf also left the refused run's `hyperinf_run_data.json` in place of the
earlier run's, and compliance wrote half of its own reports before it stopped.
"""

from __future__ import annotations

import re

import pytest


def _plant(out, names):
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).write_text(f"{name} of an earlier, finished run")


def _unchanged(out, names):
    assert sorted(p.name for p in out.iterdir()) == sorted(names)
    for name in names:
        assert (out / name).read_text() == f"{name} of an earlier, finished run"


_HYPERINF_FILES = ["hyperinf_results.json", "hyperinf_scores.json", "hyperinf_run_data.json"]
_TINY_HYPERINF = ["--pretrain_steps", "0", "--hidden_size", "16", "--num_attention_heads", "2",
                  "--num_hidden_layers", "1", "--max_steps", "1", "--methods", "tracin"]  # fmt: skip


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--vocab_size", "100"], r"^--vocab_size must be an int in \[259, 1048576\]"),
        (["--max_train", "1"], r"Only 1 training examples remain.*--max_train is 1\..*raise --max_train"),
        (["--max_length", "5000"], r"Only 0 training examples remain.*--max_length 5000"),
        (["--num_val", "100000"], r"Only 0 training examples remain.*--num_val 100000"),
        (["--task", "llm_selection", "--max_train", "1"], r"Only 1 training documents remain.*--max_train=1\).*raise --max_train"),
    ],
)
def test_hyperinf(tmp_path, extra, match):
    from hf_ext.recipes.hyperinf import main

    out = tmp_path / "out"
    _plant(out, _HYPERINF_FILES)
    with pytest.raises(ValueError) as refused:
        main([*_TINY_HYPERINF, *extra, "--output_dir", str(out)])
    _unchanged(out, _HYPERINF_FILES)
    assert re.search(match, str(refused.value)), str(refused.value)


def test_hyperinf_vocab_size_is_not_checked_against_a_base_tokenizer(tmp_path, small_tokenizer):
    """--vocab_size sizes only the tokenizer built on the fly: with a base folder that holds a tokenizer it is not
    read (and a non-default value is refused as ignored), so the check does not apply there."""
    from hf_ext.recipes._common import check_vocab_size
    from hf_ext.recipes.hyperinf import _tokenizer_folder

    class Args:
        resume_from_checkpoint = None
        output_dir = str(tmp_path / "out")

    base = tmp_path / "base"
    small_tokenizer.save_pretrained(base)
    assert _tokenizer_folder(str(base), Args) == str(base)
    check_vocab_size(100, _tokenizer_folder(str(base), Args))
    assert _tokenizer_folder(None, Args) is None
    Args.resume_from_checkpoint = str(tmp_path / "out" / "checkpoint-2")  # resumed: the interrupted run's base
    small_tokenizer.save_pretrained(tmp_path / "out" / "base")
    assert _tokenizer_folder(None, Args) == str(tmp_path / "out" / "base")


def test_federated(tmp_path):
    from hf_ext.recipes.federated import RESULT_FILES, main

    out = tmp_path / "out"
    _plant(out, RESULT_FILES)
    with pytest.raises(ValueError) as refused:
        main(["--vocab_size", "100", "--output_dir", str(out)])
    _unchanged(out, RESULT_FILES)
    assert str(refused.value).startswith("--vocab_size must be an int in [259, 1048576]"), str(refused.value)


def test_compliance_train_block_size(tmp_path):
    """--train_block_size 100000 deleted the earlier dcg_trained.*, wrote this run's retention stats, then stopped."""
    from hf_ext.recipes.compliance import main

    out = tmp_path / "out"
    names = ["dcg_trained.json", "dcg_trained.md", "retention_stats.json"]
    _plant(out, names)
    argv = ["--vocab_size", "300", "--train_models", "--train_block_size", "100000", "--train_steps", "1",
            "--continual_steps", "0", "--output_dir", str(out)]  # fmt: skip
    with pytest.raises(ValueError) as refused:
        main(argv)
    _unchanged(out, names)
    assert re.search(r"only \d+ blocks of --train_block_size 100000 tokens.*--train_batch_size", str(refused.value))
