"""Mutation kills (mu33) for the GRAPE recipe's cadence / reweighting-batch readers and the grape_corpus reproduction:
each method that reads a flag accepts it alone (one reader dropped from `_FLAG_READERS` refused a flag its method
reads), and the reproduction's grape arm gets every reweighting flag with its documented value."""

import pytest
from grape_synthetic import parse_grape_recipe as _parse

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--max_steps", "2", "--report_to", "none"]  # fmt: skip

_READS = {  # GrapeTrainer: doge has no task step, doremi's domain step draws mini-batches only
    "grape": ["--reweight_tasks_every", "--reweight_domains_every", "--reweight_batch_size", "--reweight_mini_batch_size"],
    "grape_ema": ["--reweight_tasks_every", "--reweight_domains_every", "--reweight_batch_size", "--reweight_mini_batch_size"],
    "grape_gap": ["--reweight_tasks_every", "--reweight_domains_every", "--reweight_batch_size", "--reweight_mini_batch_size"],
    "doge": ["--reweight_domains_every", "--reweight_batch_size", "--reweight_mini_batch_size"],
    "doremi": ["--reweight_domains_every", "--reweight_mini_batch_size"],
}  # fmt: skip
_VALUE = {"--reweight_tasks_every": "7", "--reweight_domains_every": "7", "--reweight_batch_size": "24",
          "--reweight_mini_batch_size": "4"}  # fmt: skip


@pytest.mark.parametrize("method, flag", [(m, f) for m, flags in _READS.items() for f in flags])
def test_each_method_accepts_the_flags_it_reads_alone(tmp_path, method, flag):
    from hf_ext.recipes.grape import validate_args

    # doremi alone needs a reference model: compared with uniform, the uniform model is one (uniform reads none)
    argv = ["--compare_methods", "uniform,doremi"] if method == "doremi" else ["--reweight_method", method]
    argv += [flag, _VALUE[flag]]
    validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


def test_reproduction_grape_arm_gets_every_reweighting_flag(tmp_path, monkeypatch):
    from hf_ext.reproduce import methods

    calls = {}

    def fake_recipe(name, argv):
        calls[argv[argv.index("--reweight_method") + 1]] = argv
        return {"mean_target_eval_loss": 1.0, "target_eval_loss": {}}

    monkeypatch.setattr(methods, "_quiet_recipe", fake_recipe)
    methods._grape_run(0, True, str(tmp_path))
    grape = calls["grape"]
    got = {flag: grape[grape.index(flag) + 1] for flag in _VALUE if flag in grape}
    assert got == {"--reweight_domains_every": "10", "--reweight_tasks_every": "10", "--reweight_batch_size": "16",
                   "--reweight_mini_batch_size": "8"}  # fmt: skip
    assert not any(flag in calls["uniform"] for flag in _VALUE)
