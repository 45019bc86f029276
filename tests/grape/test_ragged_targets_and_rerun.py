"""Tokenized target tasks with rows of different lengths (one question + answer per row), and `train()` called twice.

Ragged targets used to pass construction and fail at the first reweighting step ("expected sequence of length 10 at
dim 1 (got 13)" with the default collator; `DataCollatorForLanguageModeling` failed on the unpadded `labels` copy).
A second `train()` built a sampler at position 0 but kept the first run's schedule (keyed by sampler position), so
it drew its first sequences with stale weights, and the trajectory read steps [0, 2, 4, 2, 4].
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from datasets import Dataset
from grape_synthetic import markov_sequences, quick_grape_args, synthetic_mixture, tiny_llama
from transformers import DataCollatorForLanguageModeling, default_data_collator

from hf_ext.grape import GrapeTrainer


@pytest.fixture(scope="module")
def data():
    train, targets = synthetic_mixture()
    ragged = Dataset.from_dict({"input_ids": [s[: 8 + (i % 8)] for i, s in enumerate(markov_sequences(1, 24, 16))]})
    return train, {"t_a": ragged, "t_b": targets["t_b"]}


@pytest.fixture(scope="module")
def pad_tokenizer(small_tokenizer):
    tok = copy.deepcopy(small_tokenizer)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@pytest.mark.parametrize("collator", ["default", "lm"])
def test_ragged_tokenized_targets_train_with_the_usual_collators(collator, data, pad_tokenizer, tmp_path):
    train, targets = data
    kwargs = {"data_collator": default_data_collator}
    if collator == "lm":
        kwargs = {"data_collator": DataCollatorForLanguageModeling(pad_tokenizer, mlm=False)}
        kwargs["processing_class"] = pad_tokenizer
    args = quick_grape_args(tmp_path, max_steps=4, reweight_tasks_every=2, reweight_domains_every=2)
    trainer = GrapeTrainer(model=tiny_llama(seed=1), args=args, train_dataset=train, target_datasets=targets, **kwargs)
    trainer.train()
    st = trainer.mixture_state
    assert st.task_updates == 2 and st.domain_updates == 2
    assert torch.isfinite(st.task_weights).all() and torch.isfinite(st.domain_weights).all()


def test_padded_target_batch_has_the_token_weighted_loss_of_its_rows(data, pad_tokenizer, tmp_path):
    """Padding never counts: the batch loss is the mean over real tokens, i.e. each row's loss alone weighted by its
    number of predicted tokens; given labels (-100 on a question) and padding already in the data are respected."""
    train, targets = data
    qa = Dataset.from_dict(
        {
            "input_ids": [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23, 3, 3]],
            "labels": [[-100, -100, -100, 8, 9, 10, 11], [12, 13, 14], [15, 16, 17, 18, 19], [20, 21, 22, 23, 3, 3]],
            "attention_mask": [[1] * 7, [1] * 3, [1] * 5, [1, 1, 1, 1, 0, 0]],
        }
    )
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=quick_grape_args(tmp_path),
        train_dataset=train,
        target_datasets={"t_a": targets["t_a"], "qa": qa},
        processing_class=pad_tokenizer,
    )
    n = trainer.mixture_state.task_names.index("qa")
    rng = np.random.Generator(np.random.PCG64(0))
    batch = trainer._task_batch(n, rng, 6)
    rows = trainer._task_features(n, np.random.Generator(np.random.PCG64(0)), 6)
    assert len({len(r["input_ids"]) for r in rows}) > 1, "the draw must mix lengths"
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    pad = pad_tokenizer.pad_token_id
    for i, row in enumerate(rows):
        length = len(row["input_ids"])
        assert ids[i, :length].tolist() == row["input_ids"]
        assert (ids[i, length:] == pad).all() and (mask[i, length:] == 0).all() and (labels[i, length:] == -100).all()
        assert mask[i, :length].tolist() == row["attention_mask"]
    model = trainer.model.eval()
    with torch.no_grad():
        batched = float(model(**batch).loss)
        total, count = 0.0, 0
        for row in rows:
            real = [t for t, m in zip(row["labels"], row["attention_mask"]) if m == 1]
            alone = {k: torch.tensor([v]) for k, v in row.items()}
            alone["labels"] = torch.tensor(
                [[t if m == 1 else -100 for t, m in zip(row["labels"], row["attention_mask"])]]
            )
            tokens = sum(t != -100 for t in real[1:])  # the first label is never predicted
            total += float(model(**alone).loss) * tokens
            count += tokens
    assert batched == pytest.approx(total / count, rel=1e-5)


def test_empty_tokenized_target_names_the_task_not_block_size(data, tmp_path):
    train, targets = data
    with pytest.raises(ValueError, match=r"target_datasets\['t_a'\] has no rows") as err:
        GrapeTrainer(
            model=tiny_llama(),
            args=quick_grape_args(tmp_path),
            train_dataset=train,
            target_datasets={"t_a": targets["t_a"].select([]), "t_b": targets["t_b"]},
        )
    assert "block_size" not in str(err.value)


def test_target_labels_of_another_length_are_refused_by_name(data, tmp_path):
    train, targets = data
    bad = Dataset.from_dict({"input_ids": [[5, 6, 7], [8, 9]], "labels": [[5, 6, 7], [8]]})
    with pytest.raises(ValueError, match=r"target_datasets\['t_a'\].*labels length.*row 1"):
        GrapeTrainer(
            model=tiny_llama(),
            args=quick_grape_args(tmp_path),
            train_dataset=train,
            target_datasets={"t_a": bad, "t_b": targets["t_b"]},
        )


class _Recorder:
    def __init__(self):
        self.batches = []

    def __call__(self, features):
        out = default_data_collator(features)
        self.batches.append(out["input_ids"].clone())
        return out


def test_second_train_call_is_a_new_run_from_the_current_weights(tmp_path):
    """`train()` again = a new run from the current model and mixture weights, as a fresh trainer started there would
    run it: same schedule, same training sequences, same updates, trajectory from step 0 (learning rate 0 keeps the
    model fixed, so the fresh trainer starts from exactly the same state)."""
    synthetic_train, synthetic_targets = synthetic_mixture()
    kw = dict(max_steps=4, reweight_domains_every=2, reweight_tasks_every=2, domain_step_size=200.0, learning_rate=0.0)
    rec = _Recorder()
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=quick_grape_args(tmp_path / "twice", **kw),
        train_dataset=synthetic_train,
        target_datasets=synthetic_targets,
        data_collator=rec,
    )
    trainer.train()
    st = trainer.mixture_state
    alpha, z = st.domain_weights.clone(), st.task_weights.clone()
    assert not torch.allclose(alpha, torch.full_like(alpha, 1 / 3), atol=1e-3)
    first_batches = len(rec.batches)
    trainer.train()
    second = rec.batches[first_batches:]

    fresh_rec = _Recorder()
    fresh = GrapeTrainer(
        model=copy.deepcopy(trainer.model),
        args=quick_grape_args(tmp_path / "fresh", **kw),
        train_dataset=synthetic_train,
        target_datasets=synthetic_targets,
        data_collator=fresh_rec,
        domain_weights=dict(zip(st.domain_names, alpha.tolist())),
        task_weights=dict(zip(st.task_names, z.tolist())),
    )
    fresh.train()

    a, b = trainer.mixture_state, fresh.mixture_state
    assert [r["step"] for r in a.trajectory] == [0, 2, 4]
    torch.testing.assert_close(torch.tensor(a.trajectory[0]["domain_weights"], dtype=torch.float64), alpha)
    torch.testing.assert_close(a.weights_at(0), alpha)
    assert a.domain_updates == b.domain_updates == 2 and a.task_updates == b.task_updates == 2
    assert [p for p, _ in a.schedule] == [p for p, _ in b.schedule]
    for (_, wa), (_, wb) in zip(a.schedule, b.schedule):
        torch.testing.assert_close(wa, wb)
    torch.testing.assert_close(a.domain_weights, b.domain_weights)
    torch.testing.assert_close(a.average_domain_weights(), b.average_domain_weights())
    assert len(second) == len(fresh_rec.batches) and all(torch.equal(x, y) for x, y in zip(second, fresh_rec.batches))
    logged = [h["grape/domain_updates"] for h in trainer.state.log_history if "grape/domain_updates" in h]
    assert logged == [1, 2]


def _ragged_sources(train):
    rows = [ids[: 10 + (i % 6)] for i, ids in enumerate(train["input_ids"])]
    return Dataset.from_dict({"input_ids": rows, "domain": train["domain"]})


def test_ragged_tokenized_sources_train_with_the_language_modeling_collator(data, pad_tokenizer, tmp_path):
    """Tokenized source rows of different lengths with the usual causal-LM collator: it builds and pads the labels
    itself, so the trainer does not add an unpadded copy (which made it fail at the first step)."""
    train, targets = data
    args = quick_grape_args(tmp_path, max_steps=4, reweight_tasks_every=2, reweight_domains_every=2)
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1),
        args=args,
        train_dataset=_ragged_sources(train),
        target_datasets=targets,
        data_collator=DataCollatorForLanguageModeling(pad_tokenizer, mlm=False),
        processing_class=pad_tokenizer,
    )
    trainer.train()
    assert trainer.mixture_state.domain_updates == 2 and torch.isfinite(trainer.mixture_state.domain_weights).all()


def test_ragged_tokenized_sources_with_a_collator_that_cannot_pad_are_refused_at_construction(data, tmp_path):
    train, targets = data
    with pytest.raises(ValueError, match=r"train_dataset rows have 10 to 15 tokens, and data_collator .*padding"):
        GrapeTrainer(
            model=tiny_llama(seed=1),
            args=quick_grape_args(tmp_path),
            train_dataset=_ragged_sources(train),
            target_datasets=targets,
            data_collator=default_data_collator,
        )


def _padded_sources(train, labelled: bool = False, mask_type=int) -> dict:
    """Source rows as `tokenizer(..., padding="max_length")` gives them (0-padded, an `attention_mask` with 0s);
    `labelled`: plus `labels = input_ids` (the pads labelled) with -100 on the first two tokens of every row (given
    labels stay as given on the real tokens). `mask_type=bool` stores the mask as True / False."""
    rows, masks, labels = [], [], []
    for i, ids in enumerate(train["input_ids"]):
        n = 6 + i % 11
        rows.append(ids[:n] + [0] * (len(ids) - n))
        masks.append([mask_type(1)] * n + [mask_type(0)] * (len(ids) - n))
        labels.append([-100, -100] + rows[-1][2:])
    return {"input_ids": rows, "attention_mask": masks, **({"labels": labels} if labelled else {})}


def test_padding_stored_in_tokenized_source_rows_is_never_a_label(data, tmp_path):
    """Audit gh10 finding 2: source rows stored padded (an `attention_mask` with 0s, no `labels`, as
    `tokenizer(..., padding="max_length")` gives) got `labels = input_ids`, so the training loss and the per-domain
    reweighting gradients counted the pad tokens; target rows in the same form were masked."""
    train, targets = data
    padded = Dataset.from_dict({**_padded_sources(train), "domain": train["domain"]})
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=padded, target_datasets=targets
    )
    domain_batches = [trainer._domain_batch(k, trainer._rng("domain", k), 4) for k in range(3)]
    for batch in [next(iter(trainer.get_train_dataloader())), *domain_batches]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert (mask == 0).any(), "the batch must hold padding"
        assert (labels[mask == 0] == -100).all()
        assert torch.equal(labels[mask == 1], ids[mask == 1])
    short = padded.map(
        lambda r, i: {"attention_mask": r["attention_mask"][: -1 if i == 3 else None]}, with_indices=True
    )
    with pytest.raises(ValueError, match="attention_mask length differs from their input_ids length .*row 3"):
        GrapeTrainer(
            model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=short, target_datasets=targets
        )


def test_padding_stored_in_streamed_source_rows_is_never_a_label(data, tmp_path):
    """The streaming path (one IterableDataset per domain) labelled stored padding as well."""
    train, targets = data
    streams = {}
    for d in sorted(set(train["domain"])):
        part = train.filter(lambda r, d=d: r["domain"] == d)
        rows = [ids[: 6 + i % 5] + [0] * (len(ids) - 6 - i % 5) for i, ids in enumerate(part["input_ids"])]
        masks = [[int(t < 6 + i % 5) for t in range(len(ids))] for i, ids in enumerate(part["input_ids"])]
        streams[d] = Dataset.from_dict({"input_ids": rows, "attention_mask": masks}).to_iterable_dataset()
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=streams, target_datasets=targets
    )
    batch = next(iter(trainer.get_train_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert (mask == 0).any(), "the batch must hold padding"
    assert (labels[mask == 0] == -100).all() and torch.equal(labels[mask == 1], ids[mask == 1])


@pytest.mark.parametrize("mask_type", [int, bool])
def test_padding_stored_in_labelled_source_rows_is_never_a_label(mask_type, data, tmp_path):
    """Audit rv10b finding 2: source rows that already carry labels (labels = input_ids after padding="max_length")
    still trained on their padding and skipped the row-length check, while target rows in that form were masked.
    Audit rv12 finding 5: the fix crashed at construction on a boolean `attention_mask` (pyarrow compared it to 0)."""
    train, targets = data
    padded = Dataset.from_dict({**_padded_sources(train, labelled=True, mask_type=mask_type), "domain": train["domain"]})
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=padded, target_datasets=targets
    )
    domain_batches = [trainer._domain_batch(k, trainer._rng("domain", k), 4) for k in range(3)]
    for batch in [next(iter(trainer.get_train_dataloader())), *domain_batches]:
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        assert (mask == 0).any(), "the batch must hold padding"
        assert (labels[mask == 0] == -100).all()
        assert (labels[:, :2] == -100).all()
        assert torch.equal(labels[:, 2:][mask[:, 2:] == 1], ids[:, 2:][mask[:, 2:] == 1])
    for column in ("labels", "attention_mask"):
        short = padded.map(lambda r, i, c=column: {c: r[c][: -1 if i == 3 else None]}, with_indices=True)
        with pytest.raises(ValueError, match=f"{column} length differs from their input_ids length .*row 3"):
            GrapeTrainer(
                model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=short, target_datasets=targets
            )


def test_padding_stored_in_streamed_labelled_source_rows_is_never_a_label(data, tmp_path):
    """The streaming path of finding 2: streamed rows with labels kept their labelled padding, unchecked lengths."""
    train, targets = data

    def streams(cut_labels=False):
        out = {}
        for d in sorted(set(train["domain"])):
            columns = _padded_sources(train.filter(lambda r, d=d: r["domain"] == d), labelled=True)
            if cut_labels:
                columns["labels"] = [row[:-1] for row in columns["labels"]]
            out[d] = Dataset.from_dict(columns).to_iterable_dataset()
        return out

    trainer = GrapeTrainer(
        model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=streams(), target_datasets=targets
    )
    batch = next(iter(trainer.get_train_dataloader()))
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert (mask == 0).any(), "the batch must hold padding"
    assert (labels[mask == 0] == -100).all() and (labels[:, :2] == -100).all()
    assert torch.equal(labels[:, 2:][mask[:, 2:] == 1], ids[:, 2:][mask[:, 2:] == 1])
    trainer = GrapeTrainer(
        model=tiny_llama(seed=1), args=quick_grape_args(tmp_path), train_dataset=streams(True), target_datasets=targets
    )
    with pytest.raises(ValueError, match="streamed row's labels has 15 entries for 16 input_ids"):
        next(iter(trainer.get_train_dataloader()))
