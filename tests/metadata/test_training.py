"""Trainer and SFTTrainer integration: cooldown switch step, resume equivalence, column handling."""

import json
import os

import pytest
import torch
from transformers import Trainer, TrainingArguments

from hf_ext.metadata import CONTEXT_BEGIN, CONTEXT_END, MetadataCollator, MetadataCooldownCallback, metadata_template

from .conftest import tiny_llama


@pytest.fixture(scope="module")
def train_docs(corpus):
    return corpus.select(range(48)).select_columns(["text", "url"])


class RecordingTrainer(Trainer):
    """Records, per optimizer step, whether the batches it trained on carried metadata."""

    def __init__(self, *args, ce_id=None, cb_id=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cb_id, self.ce_id = cb_id, ce_id
        self.seen: dict[int, list[bool]] = {}

    def training_step(self, model, inputs, num_items_in_batch=None):  # noqa: D102
        ids = inputs["input_ids"]
        cb_pos = (ids == self.cb_id).nonzero()
        with_meta = any(int(ids[r, c + 1]) != self.ce_id for r, c in cb_pos.tolist())
        self.seen.setdefault(self.state.global_step + 1, []).append(with_meta)
        return super().training_step(model, inputs, num_items_in_batch)


def make_trainer(tok, docs, out, max_steps=10, cls=Trainer, save_steps=None, eval_docs=None, batch_size=4, **kwargs):
    collator = MetadataCollator(tok, metadata_template("url_host"), metadata_dropout=0.0, max_length=64)
    args = TrainingArguments(
        output_dir=str(out),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=2,
        learning_rate=1e-3,
        remove_unused_columns=False,
        report_to="none",
        logging_steps=1,
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        use_cpu=True,
        seed=0,
        data_seed=0,
        disable_tqdm=True,
        eval_strategy="steps" if eval_docs is not None else "no",
        eval_steps=3,
    )
    callback = MetadataCooldownCallback(collator, cooldown_fraction=0.3)
    trainer = cls(
        model=tiny_llama(len(tok)),
        args=args,
        train_dataset=docs,
        data_collator=collator,
        eval_dataset=eval_docs,
        callbacks=[callback],
        **kwargs,
    )
    return trainer, callback


def test_cooldown_switches_at_the_right_step(ctx_tokenizer, train_docs, tmp_path):
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    # evaluation every 3 steps uses the same collator and must not move the switch
    trainer, callback = make_trainer(
        tok, train_docs, tmp_path, cls=RecordingTrainer, cb_id=cb, ce_id=ce, eval_docs=train_docs.select(range(12))
    )
    trainer.train()
    assert callback.switch_step == 7  # 10 steps, last 30% without metadata
    assert sorted(trainer.seen) == list(range(1, 11))
    for step, flags in trainer.seen.items():
        assert len(flags) == 2  # two micro-batches per step
        assert all(flags) if step <= 7 else not any(flags), (step, flags)
    assert callback.conditioning_at(7) and not callback.conditioning_at(8)


def test_resume_matches_uninterrupted_run(ctx_tokenizer, train_docs, tmp_path):
    tok = ctx_tokenizer
    full, _ = make_trainer(tok, train_docs, tmp_path / "full", save_steps=5)
    full.train()
    state = json.loads((tmp_path / "full" / "checkpoint-5" / "metadata_conditioning.json").read_text())
    assert state["switch_step"] == 7 and state["conditioning_next_step"] is True
    resumed, callback = make_trainer(tok, train_docs, tmp_path / "full", save_steps=5)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-5"))
    assert callback.switch_step == 7
    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("iterable", [False, True], ids=["map_style", "iterable"])
def test_resumed_cooldown_pattern_matches_uninterrupted_run(ctx_tokenizer, train_docs, tmp_path, iterable):
    """After resume every micro-batch is conditioned exactly as in the uninterrupted run. For an IterableDataset the
    Trainer fast-forwards the resumed epoch through the collator; those batches must not move the switch."""
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    docs = train_docs.to_iterable_dataset() if iterable else train_docs
    # 48 documents in batches of 2 with 2 accumulation steps: 12 optimizer steps per pass, 10 trained, switch at 7
    full, full_callback = make_trainer(
        tok, docs, tmp_path, cls=RecordingTrainer, cb_id=cb, ce_id=ce, save_steps=5, batch_size=2
    )
    full.train()
    expected = {step: flags for step, flags in full.seen.items() if step > 5}
    assert expected == {6: [True, True], 7: [True, True], 8: [False, False], 9: [False, False], 10: [False, False]}
    resumed, callback = make_trainer(
        tok, docs, tmp_path, cls=RecordingTrainer, cb_id=cb, ce_id=ce, save_steps=5, batch_size=2
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "checkpoint-5"))
    assert resumed.seen == expected
    assert callback.collator.batches_seen == full_callback.collator.batches_seen  # ends where the full run's does


def test_trainer_dropping_columns_gets_a_clear_error(ctx_tokenizer, train_docs, tmp_path):
    trainer, _ = make_trainer(ctx_tokenizer, train_docs, tmp_path, max_steps=1)
    trainer.args.remove_unused_columns = True
    with pytest.raises(ValueError, match="remove_unused_columns=False"):
        trainer.train()


def test_sft_trainer_trains_with_the_collator(ctx_tokenizer, train_docs, tmp_path):
    from trl import SFTConfig, SFTTrainer

    tok = ctx_tokenizer
    collator = MetadataCollator(tok, metadata_template("url"), max_length=96, max_metadata_tokens=24)
    model = tiny_llama(len(tok))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = SFTConfig(
        output_dir=str(tmp_path),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        report_to="none",
        use_cpu=True,
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=train_docs, data_collator=collator, processing_class=tok
    )
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach().cpu(), before[n])]
    assert len(changed) == len(before)
    assert os.path.isdir(tmp_path)


@pytest.mark.parametrize("workers", [0, 2])
def test_cooldown_is_driven_from_the_main_process(ctx_tokenizer, train_docs, tmp_path, workers):
    """With workers the switch could never reach the collator copies: the run is refused before the first step."""
    tok = ctx_tokenizer
    cb, ce = tok.convert_tokens_to_ids([CONTEXT_BEGIN, CONTEXT_END])
    trainer, callback = make_trainer(tok, train_docs, tmp_path, max_steps=4, cls=RecordingTrainer, cb_id=cb, ce_id=ce)
    trainer.args.dataloader_num_workers = workers
    if workers:
        with pytest.raises(ValueError, match="dataloader_num_workers=0"):
            trainer.train()
        assert trainer.seen == {} and trainer.state.global_step == 0
        return
    trainer.train()
    assert callback.switch_step == 3
    assert {step: all(flags) for step, flags in trainer.seen.items()} == {1: True, 2: True, 3: True, 4: False}


def test_collator_refuses_a_cooldown_inside_a_worker(ctx_tokenizer, train_docs):
    collator = MetadataCollator(ctx_tokenizer, metadata_template("url_host"), metadata_dropout=0.0, max_length=64)
    collator.cooldown_start_batch = 3
    loader = torch.utils.data.DataLoader(
        list(train_docs.select(range(4))), batch_size=2, collate_fn=collator, num_workers=1
    )
    with pytest.raises(RuntimeError, match="main process"):
        next(iter(loader))
    collator.cooldown_start_batch = None  # no cooldown: workers are fine
    assert next(iter(loader))["input_ids"].shape[0] == 2
