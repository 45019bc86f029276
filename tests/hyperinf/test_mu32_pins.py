"""Tests pinning the pass-31 data-parallel dataset digest against mutants that hi31's test let through (audit mu32)."""

import torch


def test_data_parallel_digest_covers_every_example_and_value(one_process_group, monkeypatch):
    """Two datasets that differ only in their last examples' order, or in one token deep inside, are told apart
    (a digest of the first example only, or of the shapes only, would accept them)."""
    from datasets import Dataset

    from hf_ext.hyperinf import InfluenceEstimator

    from .scripts.ddp_influence import rows, tiny_lora

    seen = []
    monkeypatch.setattr(InfluenceEstimator, "_agree", lambda self, what, values: seen.append((what, list(values))))
    data = rows(6, 0)
    swapped = data[:4] + data[5:] + data[4:5]
    changed = [dict(r) for r in data]
    changed[3]["input_ids"] = changed[3]["input_ids"][:-1] + [changed[3]["input_ids"][-1] % 63 + 1]
    assert swapped != data and changed != data
    estimator = InfluenceEstimator(tiny_lora(), "tracin", batch_size=3, distributed=True)
    for train in (data, swapped, changed):
        estimator.fit(Dataset.from_list(train)).scores(Dataset.from_list(train))
    fits = [values[1] for what, values in seen if what.startswith("training sets")]
    evals = [values[1] for what, values in seen if what.startswith("evaluation sets")]
    assert len(set(fits)) == len(set(evals)) == 3, (fits, evals)


def test_data_parallel_digest_reads_float_values_by_value():
    """Float cells are digested as float64, not truncated to integers (0.25 and 0.75 differ)."""
    from hf_ext.hyperinf.estimator import _value_bytes

    assert _value_bytes([0.25, 1.0]) != _value_bytes([0.75, 1.0])
    assert _value_bytes(torch.tensor([1, 2])) == _value_bytes([1, 2])
    assert _value_bytes("ab") != _value_bytes("cd")
