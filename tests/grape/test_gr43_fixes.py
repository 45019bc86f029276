"""Audit pass 37 (gr43): GRAPE update rules against a float64 reference, and their input checks."""

from __future__ import annotations

import math
import random
import re

import numpy as np
import pytest
import torch

from hf_ext.grape.rules import (
    doge_domain_weights,
    exponentiated_step,
    grape_domain_weights,
    grape_task_weights,
    smooth_weights,
)


def _reference_step(weights, scores, step, smoothing):
    """`softmax(log w + step * s)` then smoothing, written independently in Python floats: the shift by the largest
    score of a non-zero weight is exact algebra (a softmax does not change under a shift), not a rounding choice."""
    total = sum(weights)
    w = [x / total for x in weights]
    live = [x > 0 for x in w]
    top = max(s for s, alive in zip(scores, live) if alive)
    logits = [math.log(x) + step * (s - top) if alive else -math.inf for x, s, alive in zip(w, scores, live)]
    peak = max(logits)
    e = [math.exp(v - peak) if v > -math.inf else 0.0 for v in logits]
    z = sum(e)
    return [(1 - smoothing) * x / z + smoothing / len(w) for x in e]


@pytest.mark.parametrize(
    "weights, score, step",
    [([0.9, 0.1], 1197.0, 1e8), ([0.9, 0.1], 2.0, 1e14), ([0.75, 0.25], -1366.0, 1e300), ([0.5, 0.3, 0.2], 0.5, 1e15)],
)
def test_equal_scores_leave_the_weights_unchanged_at_any_step(weights, score, step):
    # A softmax does not change under a shift: equal scores leave the weights as they are. `log w + step * s` rounded
    # `log w` away next to a large `step * s`: at step 1e8 (scores 1197) 0.9 became 0.8999996, at 1e14 (scores 2)
    # 0.9019, and at 1e300 [0.75, 0.25] became [0.5, 0.5].
    new = exponentiated_step(weights, [score] * len(weights), step)
    assert new.tolist() == pytest.approx(weights, rel=1e-13, abs=0)
    assert grape_domain_weights(weights, [score] * len(weights), step).tolist() == pytest.approx(weights, rel=1e-13)
    assert grape_task_weights(weights, [score] * len(weights), step, 0.0).tolist() == pytest.approx(weights, rel=1e-13)


def test_exponentiated_step_matches_a_float64_reference_over_random_cases():
    rng = random.Random(43)
    worst = 0.0
    for _ in range(1500):
        k = rng.choice([1, 2, 3, 5, 20])
        weights = [rng.choice([0.0, rng.random(), 1e-300, 1e-12 * rng.random(), 1.0]) for _ in range(k)]
        if not any(weights):
            weights[0] = 1.0
        scores = [rng.choice([0.0, rng.gauss(0, 1), rng.gauss(0, 1e3), 1e-20]) for _ in range(k)]
        if rng.random() < 0.25:  # ties, also with a huge step
            scores = [scores[0]] * k
        step = rng.choice([0.0, 1e-12, 1.5, 5.0, 1e3, 1e8, 1e300])
        smoothing = rng.choice([0.0, 1e-3, 0.5, 0.999])
        got = exponentiated_step(weights, scores, step, smoothing).tolist()
        ref = _reference_step(weights, scores, step, smoothing)
        worst = max(worst, max(abs(a - b) for a, b in zip(got, ref)))
    # before the fix: 0.75 (a tie at step 1e300 flattened [0, 1, 3e-13] to [0, 0.5, 0.5])
    assert worst < 1e-13


def test_weights_near_the_float64_maximum_are_normalised_without_overflow():
    # their sum overflowed to inf, every weight became 0 and the step returned [nan, nan]
    new = exponentiated_step([1e308, 1e308], [0.0, 1.0], 1.0)
    assert torch.isfinite(new).all()
    assert new.tolist() == pytest.approx([1 / (1 + math.e), math.e / (1 + math.e)], rel=1e-12)
    assert smooth_weights([1e308, 3e307], 0.0).tolist() == pytest.approx([10 / 13, 3 / 13], rel=1e-12)


@pytest.mark.parametrize(
    "weights, scores, arg",
    [
        ([True, False], [0.0, 1.0], "weights"),  # was read as [1, 0]
        ([0.5, 0.5], [True, False], "scores"),  # was read as [1, 0]
        (torch.tensor([1 + 0j, 1]), [0.0, 0.0], "weights"),  # the imaginary part was dropped with a warning
        ([0.5, 0.5], torch.tensor([1j, 0]), "scores"),
        ([0.5, 0.5], np.array(["1", "0"]), "scores"),
        ("ab", [0.0, 1.0], "weights"),  # a bare "new(): invalid data type 'str'"
        ([0.5, 0.5], ["1", "0"], "scores"),  # a bare "too many dimensions 'str'"
        ([0.5, 0.5], None, "scores"),  # a bare "must be real number, not NoneType"
        ([0.5, None], [0.0, 1.0], "weights"),
    ],
)
def test_non_real_weights_and_scores_are_refused_by_name(weights, scores, arg):
    with pytest.raises(TypeError, match=rf"^{arg} must"):
        exponentiated_step(weights, scores, 1.0)
    # real numbers in any container are still taken
    expected = exponentiated_step([0.25, 0.75], [1.0, -1.0], 2.0)
    for weights, scores in (
        (torch.tensor([1, 3]), torch.tensor([1.0, -1.0], dtype=torch.float32)),
        (np.array([1, 3]), np.array([1.0, -1.0])),
        ([np.float32(0.25), np.int64(3) / 4], (np.float64(1.0), -1)),
        ((0.25, 0.75), [torch.tensor(1.0), torch.tensor(-1.0)]),
    ):
        assert torch.allclose(exponentiated_step(weights, scores, 2.0), expected, rtol=1e-7, atol=0)
    with pytest.raises(ValueError, match="1-D vector"):  # a nested row still names its shape
        exponentiated_step([[0.5, 0.5]], [0.0, 1.0], 1.0)


def test_doge_refuses_negative_gradient_norms():
    # a negative mean norm flipped the sign of every score: [0.9, 0.1] moved towards the domain with the lower score
    with pytest.raises(ValueError, match="domain_grad_norms must be non-negative"):
        doge_domain_weights([0.5, 0.5], [1.0, -1.0], [-1.0, -1.0], 1e-3)
    moved = doge_domain_weights([0.5, 0.5], [1.0, -1.0], [1.0, 1.0], 1e-3)
    assert moved[0] > moved[1]


def test_block_size_one_is_refused_before_any_work(tmp_path):
    # A one-token block has no next token. GrapeConfig took block_size=1; GrapeTrainer then refused the packed sources
    # blaming their labels ("the source domains [...] have no labelled token ... Fix their labels"), and the recipe had
    # by then deleted the earlier run's grape_results.json and written a new grape_run.json.
    from hf_ext.grape import GrapeConfig
    from hf_ext.recipes.grape import main

    with pytest.raises(ValueError, match="block_size must be at least 2 tokens"):
        GrapeConfig(output_dir=str(tmp_path / "cfg"), block_size=1, report_to="none")
    GrapeConfig(output_dir=str(tmp_path / "cfg"), block_size=2, report_to="none")
    out = tmp_path / "run"
    out.mkdir()
    (out / "grape_results.json").write_text('{"earlier": "run"}')
    with pytest.raises(ValueError, match="block_size must be at least 2 tokens"):
        main(["--output_dir", str(out), "--block_size", "1", "--max_steps", "2", "--report_to", "none"])
    assert sorted(p.name for p in out.iterdir()) == ["grape_results.json"]
    assert (out / "grape_results.json").read_text() == '{"earlier": "run"}'


def _tiny_gpt2(vocab: int, positions: int, folder=None, tokenizer=None):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=vocab, n_positions=positions, n_embd=16, n_layer=1, n_head=2)
    model = GPT2LMHeadModel(config)
    if folder is not None:
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return model


@pytest.mark.parametrize("positions", [8, 15])  # 15: one short (mu44: a mutant off by one survived 8 alone)
def test_doremi_reference_with_fewer_positions_than_the_rows_is_refused_at_construction(
    tmp_path, grape_helpers, positions
):
    # The reference reads the same source minibatches as the model; a GPT-2 reference with 8 (or 15) learned positions
    # and source rows of 16 tokens passed construction and failed with a bare "IndexError: index out of range in self"
    # at the first DoReMi update (step 2 here), mid-training.
    from hf_ext.grape import GrapeConfig, GrapeTrainer

    train, _ = grape_helpers["synthetic_mixture"]()
    args = GrapeConfig(
        output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, reweight_method="doremi",
        reweight_domains_every=2, report_to="none", use_cpu=True, disable_tqdm=True, plot_file="",
    )  # fmt: skip
    reference = _tiny_gpt2(grape_helpers["VOCAB"], positions)
    with pytest.raises(
        ValueError,
        match=rf"read by the DoReMi reference \(reference_model\), has a row of 16 tokens .*holds {positions}\b",
    ):
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, reference_model=reference)
    # a reference holding the rows is taken
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=args,
        train_dataset=train,
        reference_model=_tiny_gpt2(grape_helpers["VOCAB"], 16),
    )


def test_recipe_refuses_a_block_longer_than_the_models_positions_before_any_work(tmp_path):
    # --model_name_or_path (a GPT-2 with 32 positions) with --block_size 64 was refused only by the trainer, after the
    # earlier run's grape_results.json had been deleted and a new grape_run.json written; the same for
    # --reference_model_name_or_path failed with a bare IndexError at the first DoReMi update.
    from hf_ext.data import build_tokenizer
    from hf_ext.recipes.grape import main

    tokenizer = build_tokenizer(512)
    short = tmp_path / "gpt2_32"
    _tiny_gpt2(len(tokenizer), 32, short, tokenizer)
    out = tmp_path / "run"
    out.mkdir()
    (out / "grape_results.json").write_text('{"earlier": "run"}')
    common = ["--output_dir", str(out), "--block_size", "64", "--max_steps", "1", "--report_to", "none"]
    with pytest.raises(ValueError, match=r"--block_size 64 is longer than the 32 learned absolute positions of the "):
        main([*common, "--model_name_or_path", str(short)])
    doremi = ["--reweight_method", "doremi", "--reference_model_name_or_path", str(short), "--vocab_size", "512"]
    with pytest.raises(ValueError, match=r"positions of the model --reference_model_name_or_path"):
        main([*common, *doremi, "--reweight_domains_every", "1", "--num_attention_heads", "2", "--hidden_size", "16"])
    assert sorted(p.name for p in out.iterdir()) == ["grape_results.json"]
    assert (out / "grape_results.json").read_text() == '{"earlier": "run"}'


@pytest.mark.parametrize(
    "where, convert",
    [
        ("train_dataset", float),  # constructed; "Expected tensor for argument #1 'indices' ..." at the first step
        ("target_datasets['t_a']", lambda t: t + 0.5),  # trained: pad_target_features cut 3.5 to 3 without a word
        ("target_datasets['t_a']", str),  # a bare ArrowNotImplementedError naming no dataset
        ("target_datasets['t_a']", lambda t: t > 10),  # bools: the same
    ],
)
def test_tokenized_columns_of_non_integers_are_refused_at_construction(tmp_path, grape_helpers, where, convert):
    from datasets import Dataset

    from hf_ext.grape import GrapeConfig, GrapeTrainer

    train, targets = grape_helpers["synthetic_mixture"]()
    if where == "train_dataset":
        ids = [[convert(t) for t in row] for row in train["input_ids"]]
        train = Dataset.from_dict({"input_ids": ids, "domain": train["domain"]})
    else:
        ids = [[convert(t) for t in row] for row in targets["t_a"]["input_ids"]]
        targets = {**targets, "t_a": Dataset.from_dict({"input_ids": ids})}
    args = GrapeConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, reweight_domains_every=1,
        reweight_tasks_every=1, reweight_batch_size=4, reweight_mini_batch_size=2, report_to="none", use_cpu=True,
        disable_tqdm=True, plot_file="",
    )  # fmt: skip
    with pytest.raises(
        ValueError, match=rf"^{re.escape(where)} has input_ids of type \w+, but token ids are integers"
    ):
        GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets)
