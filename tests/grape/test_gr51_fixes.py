"""Audit pass 41 (gr51): reweighting minibatches drawn only from source rows with a labelled next token.

A source domain may hold some rows without a labelled next token (labels all -100, e.g. a prompt whose answer was cut
off; only a domain with none at all is refused). A per-domain reweighting minibatch made of such rows only had a NaN
loss and a zero gradient: GRAPE / DoGE scored the domain 0 at that update and DoReMi gave it an excess loss of 0 (and a
logged loss of 0), whatever the domain's real score. Reproduction (domain `a` with every other row unlabelled,
`reweight_mini_batch_size=1`, an update every step): 15 of 30 GRAPE updates logged a NaN loss and a score of 0 for
`a`, 15 of 30 DoReMi updates a loss and excess loss of 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from grape_synthetic import quick_grape_args, synthetic_mixture, tiny_llama

from hf_ext.grape import GrapeTrainer


def _half_unlabelled_a():
    """The synthetic sources with every other row of domain `a` unlabelled (labels all -100)."""
    train, targets = synthetic_mixture()
    labels = [
        ids if domain != "a" or i % 2 == 0 else [-100] * len(ids)
        for i, (ids, domain) in enumerate(zip(train["input_ids"], train["domain"]))
    ]
    return train.add_column("labels", labels), targets


@pytest.mark.parametrize("method", ["grape", "doremi"])
def test_reweighting_minibatches_skip_unlabelled_source_rows(tmp_path, method):
    train, targets = _half_unlabelled_a()
    extra = {"reference_model": tiny_llama(seed=5)} if method == "doremi" else {"target_datasets": targets}
    args = quick_grape_args(
        tmp_path, reweight_method=method, max_steps=8, reweight_domains_every=1, reweight_tasks_every=1,
        reweight_mini_batch_size=1, reweight_batch_size=2, logging_steps=1,
    )  # fmt: skip
    trainer = GrapeTrainer(model=tiny_llama(), args=args, train_dataset=train, **extra)
    trainer.train()
    logs = [h for h in trainer.state.log_history if "grape/domain_loss/a" in h]
    assert len(logs) == 8
    losses = [h["grape/domain_loss/a"] for h in logs]
    scores = [h["grape/domain_score/a"] for h in logs]
    assert all(math.isfinite(x) and x > 1.0 for x in losses), losses  # a loss near log(64), never NaN or 0
    assert all(s != 0.0 for s in scores), scores


def test_reweighting_rows_of_a_map_style_source(tmp_path):
    train, targets = _half_unlabelled_a()
    trainer = GrapeTrainer(
        model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=train, target_datasets=targets
    )
    k = trainer.mixture_state.domain_names.index("a")
    rng = np.random.default_rng(0)
    features = trainer._domain_features(k, rng, 64)
    assert all(any(label != -100 for label in f["labels"][1:]) for f in features)
    # the training sampler still draws every row of the domain (an unlabelled row adds no loss there)
    assert len(trainer._domain_indices[k]) == 48 and len(trainer._reweight_indices[k]) == 24
    # fully labelled domains keep every row, in order: their reweighting draws are unchanged
    b = trainer.mixture_state.domain_names.index("b")
    assert list(trainer._reweight_indices[b]) == list(trainer._domain_indices[b])


def _streams(unlabelled_a: str):
    from datasets import Dataset

    train, targets = synthetic_mixture()
    streams = {}
    for name in ("a", "b", "c"):
        rows = [ids for ids, d in zip(train["input_ids"], train["domain"]) if d == name]
        labels = [
            [-100] * len(ids) if name == "a" and (unlabelled_a == "all" or i % 2) else ids
            for i, ids in enumerate(rows)
        ]
        streams[name] = Dataset.from_dict({"input_ids": rows, "labels": labels}).to_iterable_dataset()
    return streams, targets


def test_streamed_reweighting_minibatches_skip_unlabelled_examples(tmp_path):
    streams, targets = _streams("half")
    trainer = GrapeTrainer(
        model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=streams, target_datasets=targets
    )
    features = trainer._domain_features(0, np.random.default_rng(0), 40)
    assert len(features) == 40
    assert all(any(label != -100 for label in f["labels"][1:]) for f in features)
    # the examples read (the stream position a resume continues from) count the skipped ones too: the first pass gave
    # its 24 labelled examples, the second the other 16, reading more than 16 of its examples
    assert trainer._domain_stream_reads["a"][1] > 16


def test_streamed_domain_without_labelled_example_is_refused_by_name(tmp_path):
    streams, targets = _streams("all")
    trainer = GrapeTrainer(
        model=tiny_llama(), args=quick_grape_args(tmp_path), train_dataset=streams, target_datasets=targets
    )
    with pytest.raises(ValueError, match="streamed source domain 'a' has no example with a labelled next token"):
        trainer._domain_features(0, np.random.default_rng(0), 4)


def test_doremi_reference_runs_in_the_models_mixed_precision(tmp_path):
    """Under `bf16=True` accelerate autocasts the prepared model's forward only; the DoReMi reference ran in float32
    beside it, so a reference identical to the model (learning rate 0) had a positive excess loss, the proxy's bf16
    rounding clipped at 0: 2.9e-4 / 2.6e-4 / 3.4e-4 nats on the three domains (tiny Llama, hidden 64), against 0."""
    import copy

    train, _ = synthetic_mixture()
    model = tiny_llama(hidden=64)
    args = quick_grape_args(
        tmp_path, reweight_method="doremi", max_steps=1, learning_rate=0.0, reweight_domains_every=1,
        reweight_mini_batch_size=8, reweight_batch_size=8, bf16=True,
    )  # fmt: skip
    trainer = GrapeTrainer(model=model, args=args, train_dataset=train, reference_model=copy.deepcopy(model))
    trainer.train()
    excess = trainer.last_mean_stats["domain"][:3]
    assert excess.tolist() == [0.0, 0.0, 0.0]
    assert trainer.mixture_state.domain_weights.tolist() == pytest.approx([1 / 3] * 3, abs=1e-12)
