"""Bad GRAPE arguments are refused at construction, naming the argument, instead of being dropped or failing deep in
the collator / embedding at the first reweighting step."""

import pytest
from datasets import Dataset
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeConfig, GrapeTrainer


@pytest.fixture(scope="module")
def small():
    return synthetic_mixture(n_per_domain=4, length=16, n_target=4)


@pytest.mark.parametrize(
    "field, value, error",
    [
        ("domain_step_size", "1.5", TypeError),
        ("domain_step_size", True, TypeError),
        ("task_step_size", None, TypeError),
        ("task_smoothing", "0.001", TypeError),
        ("ema_beta", "0.9", TypeError),
        ("reweight_domains_every", True, TypeError),
        ("reweight_mini_batch_size", True, TypeError),
        ("samples_per_epoch", 1.5, ValueError),  # used to fail only when train() built the sampler
        ("samples_per_epoch", True, ValueError),
    ],
)
def test_config_refuses_wrong_types_naming_the_field(tmp_path, field, value, error):
    with pytest.raises(error, match=field):
        GrapeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, **{field: value})


def test_task_weights_without_targets_are_refused_not_dropped(tmp_path, small):
    train, _ = small
    args = quick_grape_args(tmp_path, reweight_method="uniform")
    with pytest.raises(ValueError, match="task_weights"):
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, task_weights={"t_a": 1.0})


def test_non_numeric_domain_weight_is_named(tmp_path, small):
    train, targets = small
    with pytest.raises(ValueError, match="domain_weights"):
        GrapeTrainer(
            model=tiny_llama(),
            args=quick_grape_args(tmp_path),
            train_dataset=train,
            target_datasets=targets,
            domain_weights={"a": "x", "b": 1, "c": 1},
        )


def test_target_with_empty_rows_is_refused_by_name(tmp_path, small):
    """Used to be accepted and to fail at the first task update inside `torch.embedding` ("Expected tensor for
    argument #1 'indices' to have one of the following scalar types")."""
    train, targets = small
    bad = {"t_a": targets["t_a"], "t_b": Dataset.from_dict({"input_ids": [[5, 6, 7], []]})}
    with pytest.raises(ValueError, match=r"target_datasets\['t_b'\].*empty input_ids"):
        GrapeTrainer(model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=train, target_datasets=bad)


@pytest.mark.parametrize(
    "bad, first",
    [
        ({"input_ids": [[5, 6, 7, 8]] * 4, "labels": [[-100] * 4] * 4}, 0),  # every label masked
        ({"input_ids": [[5]] * 4}, 0),  # one token: nothing left after the causal shift
        ({"input_ids": [[5, 6, 7]] * 3, "labels": [[5, 6, 7], [5, 6, 7], [5, -100, -100]]}, 2),  # one such row
        ({"input_ids": [[5, 6, 7]] * 2, "attention_mask": [[1, 1, 1], [1, 0, 0]]}, 1),  # masked after the first
        # the same as a True / False mask (audit rv13: pyarrow has no bool == int kernel, construction crashed)
        ({"input_ids": [[5, 6, 7]] * 2, "attention_mask": [[True] * 3, [True, False, False]]}, 1),
    ],
)
@pytest.mark.parametrize("method", ["grape", "grape_ema"])
def test_target_rows_without_a_labelled_next_token_are_refused_by_name(tmp_path, small, bad, first, method):
    """Such a row has no loss: a reweighting sample of them gave a NaN loss and a zero gradient, which `grape` read
    as a task that does not improve (its weight rose at every update: 0.43, 0.52, 0.59, 0.73 over 4 updates) and
    `grape_ema` failed on at the first update (a NaN improvement score not naming the task)."""
    train, targets = small
    args = quick_grape_args(tmp_path, reweight_method=method)
    with pytest.raises(ValueError, match=rf"target_datasets\['t_c'\] has \d+ of \d+ rows without a labelled next token "
                       rf"\(the first at row {first}\)"):  # fmt: skip
        GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train,
                     target_datasets={**targets, "t_c": Dataset.from_dict(bad)})  # fmt: skip


def test_train_dataset_with_empty_rows_is_refused_by_name(tmp_path, small):
    """Used to fail at the first step inside the data collator ("expected sequence of length 3 ... (got 0)")."""
    _, targets = small
    train = Dataset.from_dict({"input_ids": [[1, 2, 3], [], [4, 5, 6], [7, 8, 9]], "domain": ["a", "b", "b", "a"]})
    with pytest.raises(ValueError, match="train_dataset.*empty input_ids.*row 1"):
        GrapeTrainer(model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=train, target_datasets=targets)


def test_valid_edge_values_stay_valid(tmp_path, small):
    import numpy as np

    GrapeConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, task_smoothing=0.0, domain_step_size=0,
                task_step_size=np.float32(2.0), samples_per_epoch=None, reweight_domains_every=0)  # fmt: skip
    train, targets = small
    GrapeTrainer(
        model=tiny_llama(),
        args=quick_grape_args(tmp_path),
        train_dataset=train.select([0, 1, 4, 5, 8, 9]),
        target_datasets=targets,
        domain_weights={"a": 0, "b": 1, "c": 1},
    )


def test_a_null_domain_in_raw_text_is_refused_before_packing(tmp_path, small, monkeypatch):
    """The domain names are read (and a null refused) before the raw text is tokenized and packed by domain: a null
    used to become a domain named "None" until the packed rows were checked."""
    import hf_ext.grape.trainer as trainer_module
    from hf_ext.data import build_tokenizer

    def no_packing(*args, **kwargs):
        raise AssertionError("packed before the domain column was checked")

    monkeypatch.setattr(trainer_module, "pack_by_domain", no_packing)
    _, targets = small
    raw = Dataset.from_dict({"text": ["one two", "three", "four five", "six"], "domain": ["a", None, "b", "a"]})
    with pytest.raises(ValueError, match=r"domain column 'domain' .* is null in 1 of 4 rows, the first at row 1"):
        GrapeTrainer(model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=raw, target_datasets=targets,
                     processing_class=build_tokenizer(300))  # fmt: skip
