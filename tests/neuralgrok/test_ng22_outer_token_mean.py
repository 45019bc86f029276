"""Fix of audit ng22 F1: the outer loss is the mean over all labelled tokens of the outer set, whatever its batching.

`amplifier_outer_step` weighted each outer batch's mean loss by its number of rows. With rows of different label
counts (any causal-LM data) the outer loss, and so the amplifier's meta step, then depended on how the outer set was
cut into batches (`NeuralGrokTrainer`: `outer_batch_size`, by default `per_device_train_batch_size`, so a 2-rank DDP run
trained another amplifier than one process on the same global batch). Each batch is now weighted by its labelled
next-token count. The arithmetic data (one label per row) gives the same weights as before (bit-identical runs).
"""

import pytest
import torch

from hf_ext.neuralgrok import (
    GrokDecoderConfig,
    GrokDecoderForCausalLM,
    NeuralAmplifier,
    NeuralGrokConfig,
    NeuralGrokTrainer,
    amplifier_outer_step,
    build_arithmetic_dataset,
    split_arithmetic_dataset,
)


def unequal_rows():
    """16 rows of 6 tokens: rows 0-7 with one labelled next token, rows 8-15 with five (float64 model)."""
    torch.manual_seed(0)
    model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32)).double()
    ids = torch.randint(0, 13, (16, 6))
    labels = ids.clone()
    labels[:8, :5] = -100
    return model, ids, labels


def outer_step(model, inner, batches):
    """One outer step from a fixed amplifier: (L_outer, phi after the meta-Adam step)."""
    torch.manual_seed(1)
    amp = NeuralAmplifier((8,)).double()
    meta = torch.optim.Adam(amp.parameters(), lr=1e-2)
    loss = amplifier_outer_step(amp, meta, model, [inner], batches, virtual_lr=1e-1)
    return loss, torch.cat([p.detach().flatten() for p in amp.parameters()])


def test_outer_loss_and_meta_step_do_not_depend_on_the_outer_batching():
    """The same 16 outer rows (8 with 1 labelled token, 8 with 5) in one batch, in batches of 8 (one batch of each
    kind of row) and of 5 (5, 5, 5, 1 rows) give the same L_outer, equal to the whole set's token mean at theta', and
    the same amplifier after the meta step (float64). Before: 2.94449 in one batch, 3.00457 in batches of 8, and
    amplifiers 5.2e-3 apart."""
    model, ids, labels = unequal_rows()
    inner = {"input_ids": ids[:4], "labels": labels[:4]}
    outer = {"input_ids": ids, "labels": labels}
    results = {
        size: outer_step(model, inner, [{k: v[i : i + size] for k, v in outer.items()} for i in range(0, 16, size)])
        for size in (16, 8, 5)
    }
    loss, phi = results[16]
    for size in (8, 5):
        assert results[size][0] == pytest.approx(loss, rel=1e-12, abs=0), size
        torch.testing.assert_close(results[size][1], phi, rtol=0, atol=1e-11, msg=f"outer batches of {size}")
    # the token mean over the whole set, by hand: 8 * 1 + 8 * 5 = 48 labelled next tokens in all
    assert int((labels[:, 1:] != -100).sum()) == 48


def test_outer_batch_without_a_labelled_token_has_no_term():
    """An outer batch whose labels are all -100 (its mean loss is NaN) adds no term to the token mean: the outer loss
    and step equal those without it (before: weighted by its rows, it made L_outer, and the amplifier, NaN)."""
    model, ids, labels = unequal_rows()
    inner = {"input_ids": ids[:4], "labels": labels[:4]}
    outer = {"input_ids": ids, "labels": labels}
    unlabelled = {"input_ids": ids[:3], "labels": torch.full_like(labels[:3], -100)}
    loss, phi = outer_step(model, inner, [outer])
    loss_with, phi_with = outer_step(model, inner, [outer, unlabelled])
    assert loss_with == loss
    assert torch.equal(phi_with, phi)


def unequal_label_splits():
    """The a+b mod 11 splits with rows of 1 to 4 labelled next tokens (`idx % 4 + 1`)."""
    splits = split_arithmetic_dataset(build_arithmetic_dataset("a+b", 11), 0.5, 0.25, seed=0)

    def more_labels(row, idx):
        k = idx % 4 + 1
        ids = list(row["input_ids"])
        return {"labels": [-100] * (len(ids) - k) + ids[len(ids) - k :]}

    return {name: ds.map(more_labels, with_indices=True) for name, ds in splits.items()}


def test_trainer_amplifier_does_not_depend_on_outer_batch_size(tmp_path):
    """NeuralGrokTrainer (float64, 4 steps, T = 2) on rows with 1 to 4 labelled tokens trains the same amplifier with
    outer batches of 3 (3, 3, 3, 3, 1 rows) and of 13 (the whole outer set), as a 2-rank run at B rows per device and one process at 2B
    rows (outer_batch_size defaults to per_device_train_batch_size) must. Before, they were ~1e-4 apart."""
    splits = unequal_label_splits()
    assert len(splits["outer"]) == 13
    amplifiers = []
    for outer_batch_size in (3, 13):
        torch.manual_seed(0)
        model = GrokDecoderForCausalLM(GrokDecoderConfig(vocab_size=13, hidden_size=32)).double()
        amplifier = NeuralAmplifier((8,)).double()
        args = NeuralGrokConfig(
            output_dir=str(tmp_path / str(outer_batch_size)), max_steps=4, per_device_train_batch_size=8, outer_every=2,
            outer_batch_size=outer_batch_size, meta_learning_rate=1e-2, use_cpu=True, disable_tqdm=True, seed=0,
            report_to="none", save_strategy="no",
        )  # fmt: skip
        trainer = NeuralGrokTrainer(
            model=model, args=args, train_dataset=splits["inner"], outer_dataset=splits["outer"], amplifier=amplifier
        )
        trainer.train()
        assert trainer.num_outer_steps == 2
        amplifiers.append(torch.cat([p.detach().flatten() for p in amplifier.parameters()]))
    torch.testing.assert_close(amplifiers[0], amplifiers[1], rtol=0, atol=1e-12)
