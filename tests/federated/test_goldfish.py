"""Goldfish loss: drop rate, determinism for repeated contexts, alignment with HF's shifted loss."""

import pytest
import torch

from hf_ext.federated import GoldfishCollator, apply_goldfish, goldfish_drop_mask


@pytest.mark.parametrize("k", [2, 4, 8])
def test_drop_fraction_is_about_one_over_k(k):
    g = torch.Generator().manual_seed(0)
    targets = torch.randint(1, 4096, (10, 10_000), generator=g)
    mask = goldfish_drop_mask(targets, k, 13)
    assert not mask[:, :12].any()  # the first h - 1 positions are never dropped
    frac = mask[:, 12:].float().mean().item()
    assert frac == pytest.approx(1 / k, abs=0.01)


def test_deterministic_for_repeated_contexts():
    g = torch.Generator().manual_seed(1)
    window = torch.randint(1, 4096, (13,), generator=g)
    rows = []
    for _ in range(64):  # the same 13-token context after different random prefixes
        prefix = torch.randint(1, 4096, (int(torch.randint(0, 20, (1,), generator=g)),), generator=g)
        rows.append(torch.cat([prefix, window]))
    decisions = {bool(goldfish_drop_mask(r[None], 4, 13)[0, -1]) for r in rows}
    assert len(decisions) == 1
    # and the full mask is a pure function of the tokens
    t = torch.randint(1, 4096, (2, 300), generator=g)
    assert torch.equal(goldfish_drop_mask(t, 4), goldfish_drop_mask(t.clone(), 4))
    # some contexts are dropped and some are not (the rule depends on the window content)
    many = torch.randint(1, 4096, (2000, 13), generator=g)
    assert 0 < goldfish_drop_mask(many, 4)[:, -1].float().mean() < 1


def test_labels_alignment_and_hf_loss(small_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    g = torch.Generator().manual_seed(2)
    ids = torch.randint(3, 500, (2, 64), generator=g)
    labels = apply_goldfish(ids.clone(), 3, 13, input_ids=ids)
    drop = goldfish_drop_mask(ids[:, 1:], 3, 13)
    assert torch.equal(labels[:, 1:] == -100, drop)
    assert (labels[:, 0] != -100).all()
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=512, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)
    )
    out = model(input_ids=ids, labels=labels)
    logits = model(input_ids=ids).logits[:, :-1]
    keep = ~drop
    manual = torch.nn.functional.cross_entropy(logits[keep], ids[:, 1:][keep])
    torch.testing.assert_close(out.loss, manual, atol=1e-5, rtol=1e-5)


def test_collator_and_invalid_k():
    from transformers import default_data_collator

    feats = [{"input_ids": list(range(5, 105)), "labels": list(range(5, 105))}]
    batch = GoldfishCollator(default_data_collator, k=2)(feats)
    dropped = (batch["labels"] == -100).float().mean().item()
    assert 0.2 < dropped < 0.7
    for bad in (1, 0, -3, 2.5):
        with pytest.raises(ValueError, match="k"):
            GoldfishCollator(default_data_collator, k=bad)
    with pytest.raises(ValueError, match=">= 2"):
        goldfish_drop_mask(torch.zeros(1, 20, dtype=torch.long), 1)


def test_defaults_are_k_4_and_a_13_token_window():
    """Documented defaults: GoldfishCollator drops 1/4 of the targets (k = 4) keyed by 13-token windows, and
    `goldfish_drop_mask` hashes 13 tokens; both are checked against the reference rule, not only the attributes."""
    from transformers import default_data_collator

    from .test_mutation_kills_memorization import _reference_drop

    collator = GoldfishCollator(default_data_collator)
    assert (collator.k, collator.context_width) == (4, 13)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(1, 4096, (2, 120), generator=g)
    batch = collator([{"input_ids": row.tolist(), "labels": row.tolist()} for row in ids])
    expected = ids.clone()
    expected[:, 1:][_reference_drop(ids[:, 1:], 4, 13)] = -100
    assert torch.equal(batch["labels"], expected)
    assert (batch["labels"] == -100).any()
    targets = torch.randint(1, 4096, (2, 150), generator=g)
    assert torch.equal(goldfish_drop_mask(targets, 4), _reference_drop(targets, 4, 13))
    # the data above tell the defaults apart from their neighbours
    assert not torch.equal(_reference_drop(ids[:, 1:], 3, 13), _reference_drop(ids[:, 1:], 4, 13))
    assert not torch.equal(_reference_drop(targets, 4, 12), _reference_drop(targets, 4, 13))


@pytest.mark.parametrize("dp", [False, True])
def test_private_trainer_drops_goldfish_tokens_in_training_only(tmp_path, dp):
    """Goldfish drops target tokens from the training loss; `evaluate()` reports the loss over every token, as the
    Goldfish reference does ("no goldfish when reporting validation loss"), with or without DP-SGD."""
    from datasets import Dataset
    from transformers import default_data_collator

    from hf_ext.federated import PrivateTrainer, PrivateTrainingArguments

    from .conftest import tiny_llama

    g = torch.Generator().manual_seed(1)
    rows = torch.randint(1, 512, (8, 40), generator=g)
    data = Dataset.from_dict({"input_ids": rows.tolist(), "labels": rows.tolist(), "attention_mask": [[1] * 40] * 8})
    model = tiny_llama(512, hidden=16)
    extra = dict(dp_clip_norm=1.0, max_grad_norm=0, dp_noise_seed=0) if dp else {}
    args = PrivateTrainingArguments(
        output_dir=str(tmp_path), report_to="none", use_cpu=True, disable_tqdm=True, per_device_train_batch_size=8,
        per_device_eval_batch_size=8, goldfish_k=2, **extra,
    )  # fmt: skip
    trainer = PrivateTrainer(model=model, args=args, train_dataset=data, eval_dataset=data,
                             data_collator=default_data_collator)  # fmt: skip
    with torch.no_grad():
        every_token = float(model(input_ids=rows, labels=rows).loss)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(every_token, rel=1e-5)
    eval_labels = torch.cat([b["labels"] for b in trainer.get_eval_dataloader()])
    assert not (eval_labels == -100).any()
    train_batch = next(b for b in trainer.get_train_dataloader() if len(b["labels"]))
    dropped = (train_batch["labels"] == -100).float().mean().item()
    assert 0.3 < dropped < 0.6  # about 1/k of the targets, after the first h - 1 positions
