"""Audit cl21, F3: scripts/bench_grape.py checks every argument before any work, naming the flag.

It checked only --steps and --periods: `--periods abc` gave a bare `invalid literal for int()`, `--hidden_size 30` /
`0` and `--threads -2` failed with transformers' / torch's errors after the tokenizer and the corpus were built,
`--batch_size 0` reached the training and `--threads 0` silently meant torch's choice.
"""

import os
import runpy

import pytest


class _Trained(Exception):
    """Raised in place of training: the argument checks let the run start."""


@pytest.fixture
def bench(repo_root, monkeypatch):
    import hf_ext.grape

    def train(self, *args, **kwargs):
        raise _Trained(self.args.per_device_train_batch_size)

    monkeypatch.setattr(hf_ext.grape.GrapeTrainer, "train", train)
    return runpy.run_path(os.path.join(repo_root, "scripts", "bench_grape.py"))["main"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--periods", "abc"], "argument --periods: must be comma-separated integers >= 1 like '50,100', got 'abc'"),
        (["--periods", "0"], "argument --periods: must be comma-separated integers >= 1"),
        (["--periods", "3", "--steps", "2"], r"argument --periods: every period must be in \[1, --steps 2\], got 3"),
        (["--steps", "0"], "argument --steps: must be an integer >= 1, got 0"),
        (["--hidden_size", "30"], "argument --hidden_size: must be a multiple of 8 .*, got 30; e.g. 24"),
        (["--hidden_size", "0"], "argument --hidden_size: must be an integer >= 1, got 0"),
        (["--batch_size", "0"], "argument --batch_size: must be an integer >= 1, got 0"),
        (["--block_size", "0"], "argument --block_size: must be an integer >= 1, got 0"),
        (["--threads", "-2"], "argument --threads: must be an integer >= 1, got -2"),
        (["--threads", "0"], "argument --threads: must be an integer >= 1, got 0"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(bench, capsys, argv, message):
    import re

    base = ["--steps", "2", "--periods", "1"]
    with pytest.raises(SystemExit) as exc:
        bench([*base, *argv])  # later flags win
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert re.search(message, err), err


def test_good_arguments_reach_the_training(bench):
    with pytest.raises(_Trained) as started:
        bench(["--steps", "2", "--periods", "1,2", "--batch_size", "2", "--block_size", "32", "--hidden_size", "16",
               "--threads", "1"])  # fmt: skip
    assert started.value.args == (2,)
