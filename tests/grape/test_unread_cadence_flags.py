"""The GRAPE recipe refuses update-cadence and reweighting-batch flags that no method of the run reads (they were
accepted without a word: `--reweight_method doge --reweight_tasks_every 5` never updates task weights, uniform never
reweights, doremi draws mini-batches only), and `hf-ext reproduce grape_corpus` passes them to its grape run only."""

import pytest
from grape_synthetic import parse_grape_recipe as _parse

TINY = ["--vocab_size", "300", "--per_device_train_batch_size", "4", "--hidden_size", "32", "--intermediate_size",
        "64", "--num_attention_heads", "2", "--max_steps", "2", "--report_to", "none"]  # fmt: skip


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--reweight_method", "doge", "--reweight_tasks_every", "5"], "--reweight_tasks_every"),
        (["--compare_methods", "uniform,doremi", "--reweight_tasks_every", "5"], "--reweight_tasks_every"),
        (["--reweight_method", "uniform", "--reweight_domains_every", "5"], "--reweight_domains_every"),
        (["--reweight_method", "uniform", "--reweight_tasks_every", "0"], "--reweight_tasks_every"),
        (["--compare_methods", "uniform,doremi", "--reweight_batch_size", "32"], "--reweight_batch_size"),
        (["--reweight_method", "uniform", "--reweight_batch_size", "32"], "--reweight_batch_size"),
        (["--reweight_method", "uniform", "--reweight_mini_batch_size", "4"], "--reweight_mini_batch_size"),
        (["--compare_methods", "uniform,doge", "--reweight_tasks_every", "5"], "--reweight_tasks_every"),
    ],
)
def test_cadence_and_batch_flags_no_method_reads_are_refused(tmp_path, argv, flag):
    from hf_ext.recipes.grape import validate_args

    with pytest.raises(ValueError, match=f"{flag} is read only by --reweight_method .* has no effect on"):
        validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


@pytest.mark.parametrize(
    "argv",
    [
        ["--reweight_tasks_every", "5", "--reweight_domains_every", "3"],
        ["--reweight_batch_size", "32", "--reweight_mini_batch_size", "4"],
        ["--reweight_method", "grape_gap", "--reweight_tasks_every", "0"],
        ["--reweight_method", "doge", "--reweight_domains_every", "5", "--reweight_batch_size", "32"],
        ["--compare_methods", "uniform,doremi", "--reweight_domains_every", "5", "--reweight_mini_batch_size", "4"],
        ["--compare_methods", "uniform,grape", "--reweight_tasks_every", "5"],
    ],
)
def test_cadence_and_batch_flags_a_method_reads_are_accepted(tmp_path, argv):
    from hf_ext.recipes.grape import validate_args

    validate_args(*_parse([*TINY, "--output_dir", str(tmp_path / "o"), *argv]))


def test_reproduction_passes_reweighting_flags_to_grape_only(tmp_path, monkeypatch):
    """Each recipe call of the grape_corpus reproduction passes the recipe's checks (it ran its uniform arm with the
    grape arm's cadences, which uniform ignores)."""
    from hf_ext.recipes.grape import validate_args
    from hf_ext.reproduce import methods

    calls = []

    def fake_recipe(name, argv):
        assert name == "grape"
        validate_args(*_parse(argv))
        calls.append(argv)
        return {"mean_target_eval_loss": 1.0, "target_eval_loss": {}}

    monkeypatch.setattr(methods, "_quiet_recipe", fake_recipe)
    methods._grape_run(0, True, str(tmp_path))
    assert [a[a.index("--reweight_method") + 1] for a in calls] == ["grape", "uniform"]
    assert "--reweight_tasks_every" in calls[0] and "--reweight_tasks_every" not in calls[1]
