"""gr27 F1: a resume of a streaming run (a dict of IterableDatasets) did not continue the uninterrupted run: the skipped
batches were re-drawn with the checkpoint's domain weights (not those in force when they were first drawn), and the
per-domain reweighting streams restarted from their first examples, so the resumed run trained on other sequences and
reached other weights (task weights 0.62 / 0.38 against 0.27 / 0.73 in a 10-step audit run). The stream now follows
the weight schedule by example position and each checkpoint records every process's reweighting stream positions."""

import json

import torch
from transformers import TrainerCallback


class _RecordBatches(TrainerCallback):
    def __init__(self, trainer):
        self.trainer, self.batches = trainer, []
        original = trainer.training_step

        def training_step(model, inputs, *args, **kwargs):
            self.batches.append((trainer.state.global_step, inputs["input_ids"].tolist()))
            return original(model, inputs, *args, **kwargs)

        trainer.training_step = training_step


def _streaming_trainer(synthetic, grape_helpers, output_dir, **overrides):
    from grape_synthetic import quick_grape_args

    from hf_ext.grape import GrapeTrainer

    train, targets = synthetic
    streams = {
        d: train.filter(lambda r, d=d: r["domain"] == d).remove_columns(["domain"]).to_iterable_dataset()
        for d in ("a", "b", "c")
    }
    kw = dict(max_steps=4, save_strategy="steps", save_steps=2, reweight_domains_every=1, reweight_tasks_every=1,
              plot_file=None, learning_rate=1e-2)  # fmt: skip
    kw.update(overrides)
    args = quick_grape_args(str(output_dir), **kw)
    torch.manual_seed(0)
    model = grape_helpers["tiny_llama"]()
    return GrapeTrainer(model=model, args=args, train_dataset=streams, target_datasets=targets)


def test_streaming_resume_equals_the_uninterrupted_run(synthetic, grape_helpers, tmp_path):
    full = _streaming_trainer(synthetic, grape_helpers, tmp_path / "full")
    full_batches = _RecordBatches(full).batches
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"

    resumed = _streaming_trainer(synthetic, grape_helpers, tmp_path / "resumed")
    resumed_batches = _RecordBatches(resumed).batches
    resumed.train(resume_from_checkpoint=str(checkpoint))
    assert resumed_batches == [b for b in full_batches if b[0] >= 2]  # the same sequences at the same steps
    a, b = full.mixture_state, resumed.mixture_state
    assert torch.equal(a.domain_weights, b.domain_weights) and torch.equal(a.task_weights, b.task_weights)
    assert torch.equal(a.domain_weight_sum, b.domain_weight_sum) and a.trajectory == b.trajectory
    assert [p for p, _ in a.schedule] == [p for p, _ in b.schedule]
    pa, pb = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(pa[k], pb[k]) for k in pa)
    reads = json.loads((checkpoint / "grape_streams_0.json").read_text())  # per process: seed and examples read
    assert set(reads) == {"a", "b", "c"} and all(done > 0 for _, done in reads.values())


def test_streaming_resume_without_data_skip_draws_with_the_current_weights(synthetic, grape_helpers, tmp_path):
    full = _streaming_trainer(synthetic, grape_helpers, tmp_path / "full")
    full.train()
    checkpoint = tmp_path / "full" / "checkpoint-2"
    saved = json.loads((checkpoint / "grape_state.json").read_text())
    assert len(saved["schedule_positions"]) == 3 and saved["schedule_positions"][0] == 0  # 2 updates, at positions > 0

    resumed = _streaming_trainer(synthetic, grape_helpers, tmp_path / "resumed", ignore_data_skip=True)
    seen = []
    original = resumed._domain_step

    def domain_step(logs):
        seen.append([p for p, _ in resumed.mixture_state.schedule])
        return original(logs)

    resumed._domain_step = domain_step
    resumed.train(resume_from_checkpoint=str(checkpoint))
    # the stream restarts from its first example: a new segment with the checkpoint's weights from position 0, so the
    # update after the resume applies from the examples drawn next (not from the checkpoint's last position on)
    assert seen[0] == [0]
    assert resumed.mixture_state.schedule[1][0] < saved["schedule_positions"][-1]


# ---- F2: source rows the model cannot index are refused at construction, as target rows are ---------------------------
# A source row longer than a GPT-2 model's position table, or with a token id outside its vocabulary, used to pass
# construction and fail with a bare `IndexError: index out of range in self` at the first training step.


def _gpt2_run(tmp_path, source_len, source_high, method="grape"):
    import numpy as np
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel

    from hf_ext.grape import GrapeConfig, GrapeTrainer

    rng = np.random.default_rng(0)
    rows = [
        {"input_ids": rng.integers(4, source_high, source_len).tolist(), "domain": d} for d in "ab" for _ in range(4)
    ]
    targets = {"t": Dataset.from_list([{"input_ids": rng.integers(4, 60, 16).tolist()} for _ in range(4)])}
    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    args = GrapeConfig(
        output_dir=str(tmp_path), reweight_method=method, per_device_train_batch_size=2, max_steps=1, use_cpu=True,
        report_to="none", save_strategy="no", plot_file=None, reweight_batch_size=2, reweight_mini_batch_size=2,
    )  # fmt: skip
    trainer = GrapeTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(rows),
        target_datasets=targets if method != "uniform" else None,
    )  # fmt: skip
    trainer.train()


def test_a_source_row_longer_than_the_position_table_is_refused_at_construction(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"train_dataset has a row of 48 tokens .* holds 32 positions"):
        _gpt2_run(tmp_path, 48, 60)
    with pytest.raises(ValueError, match=r"train_dataset has a row of 48 tokens"):
        _gpt2_run(tmp_path, 48, 60, method="uniform")
    _gpt2_run(tmp_path, 32, 60)  # at the limit: trains


def test_a_source_token_id_outside_the_vocabulary_is_refused_at_construction(tmp_path):
    import pytest

    with pytest.raises(ValueError, match=r"train_dataset has the token id \d+ in its input_ids, .* 64 tokens"):
        _gpt2_run(tmp_path, 16, 100)
