"""GrapeTrainer end to end on tiny models: logging, checkpoints, resume, export, baselines, streaming, errors."""

from __future__ import annotations

import json
import os

import pytest
import torch

from hf_ext.grape import GrapeConfig, GrapeTrainer, pack_by_domain


def make_args(output_dir, **overrides) -> GrapeConfig:
    kw = dict(
        output_dir=str(output_dir),
        max_steps=6,
        per_device_train_batch_size=4,
        learning_rate=5e-3,
        lr_scheduler_type="constant",
        reweight_domains_every=2,
        reweight_tasks_every=2,
        reweight_batch_size=4,
        reweight_mini_batch_size=2,
        logging_steps=100,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
        dataloader_num_workers=0,
    )
    kw.update(overrides)
    return GrapeConfig(**kw)


def on_simplex(w: torch.Tensor) -> bool:
    return bool((w >= 0).all()) and abs(float(w.sum()) - 1.0) < 1e-9


@pytest.fixture(scope="module")
def grape_run(tmp_path_factory, synthetic, grape_helpers):
    """Uninterrupted 6-step GRAPE run with checkpoints every 2 steps."""
    train, targets = synthetic
    out = tmp_path_factory.mktemp("grape_full")
    args = make_args(out, save_strategy="steps", save_steps=2)
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets
    )
    trainer.train()
    return trainer, out


def test_run_logs_checkpoints_and_exports(grape_run):
    trainer, out = grape_run
    st = trainer.mixture_state
    assert [r["step"] for r in st.trajectory] == [0, 2, 4, 6]
    assert st.domain_updates == 3 and st.task_updates == 3
    assert on_simplex(st.domain_weights) and on_simplex(st.task_weights)
    assert not torch.allclose(st.domain_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert not torch.allclose(st.task_weights, torch.full((2,), 0.5, dtype=torch.float64))
    logged = [h for h in trainer.state.log_history if "grape/domain_weight/a" in h]
    assert [h["step"] for h in logged] == [2, 4, 6]
    for key in ("grape/task_weight/t_b", "grape/avg_domain_weight/c", "grape/domain_updates", "grape/task_loss/t_a"):
        assert key in logged[-1]
    for step in (2, 4, 6):
        ck = out / f"checkpoint-{step}"
        assert (ck / "grape_state.safetensors").is_file() and (ck / "grape_state.json").is_file()
    meta = json.loads((out / "checkpoint-4" / "grape_state.json").read_text())
    assert meta["domain_updates"] == 2 and meta["domain_names"] == ["a", "b", "c"]
    mixture = json.loads((out / "mixture.json").read_text())
    assert mixture["domains"] == pytest.approx(dict(zip("abc", st.domain_weights.tolist())))
    assert mixture["tasks"] == pytest.approx({"t_a": float(st.task_weights[0]), "t_b": float(st.task_weights[1])})
    assert (out / "mixture_weights.png").stat().st_size > 5000


def test_resume_matches_uninterrupted_run(grape_run, synthetic, grape_helpers, tmp_path):
    full, out = grape_run
    train, targets = synthetic
    args = make_args(tmp_path / "resumed", save_strategy="steps", save_steps=2)
    resumed = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=123), args=args, train_dataset=train, target_datasets=targets
    )
    resumed.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    a, b = full.mixture_state, resumed.mixture_state
    assert [r["step"] for r in b.trajectory] == [0, 2, 4, 6]
    for ra, rb in zip(a.trajectory, b.trajectory):
        torch.testing.assert_close(torch.tensor(rb["domain_weights"]), torch.tensor(ra["domain_weights"]))
        torch.testing.assert_close(torch.tensor(rb["task_weights"]), torch.tensor(ra["task_weights"]))
    torch.testing.assert_close(b.domain_weights, a.domain_weights, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(b.task_weights, a.task_weights, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(b.average_domain_weights(), a.average_domain_weights(), rtol=1e-6, atol=1e-9)
    assert [p for p, _ in b.schedule] == [p for p, _ in a.schedule]
    assert b.domain_updates == a.domain_updates == 3


def test_reweighting_steps_keep_the_scheduled_training_loss_log(synthetic, grape_helpers, tmp_path):
    """The reweighting's own `log` call cleared `control.should_log`, so the training loss, grad norm and learning
    rate were never logged at a reweighting step (the recipe's defaults reweight and log every 20 steps: no loss
    was ever logged)."""
    train, targets = synthetic
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(tmp_path, max_steps=6, logging_steps=2, reweight_domains_every=2, reweight_tasks_every=3),
        train_dataset=train,
        target_datasets=targets,
    )
    trainer.train()
    history = trainer.state.log_history
    assert [h["step"] for h in history if "loss" in h] == [2, 4, 6]
    assert all("grad_norm" in h and "learning_rate" in h for h in history if "loss" in h)
    assert [h["step"] for h in history if "grape/domain_updates" in h] == [2, 3, 4, 6]


def test_resume_from_a_checkpoint_saved_with_save_only_model_is_refused_before_anything_is_restored(
    synthetic, grape_helpers, tmp_path
):
    """`save_only_model=True` checkpoints hold the weights and the mixture state but no optimizer, scheduler or RNG
    state: a resume used to restore the mixture and go on with a fresh AdamW and a restarted LR schedule. It is
    refused now, before the weights or the mixture state change."""
    train, targets = synthetic
    out = tmp_path / "weights_only"
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(out, max_steps=2, save_strategy="steps", save_steps=2, save_only_model=True),
        train_dataset=train,
        target_datasets=targets,
    ).train()
    ckpt = out / "checkpoint-2"
    assert (ckpt / "grape_state.json").is_file() and not (ckpt / "optimizer.pt").exists()
    resumed = GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=1),
        args=make_args(tmp_path / "resumed", max_steps=4),
        train_dataset=train,
        target_datasets=targets,
    )
    before = {k: v.clone() for k, v in resumed.model.state_dict().items()}
    with pytest.raises(ValueError, match=r"save_only_model=True: it holds only the model weights.*from_pretrained"):
        resumed.train(resume_from_checkpoint=str(ckpt))
    assert resumed.state.global_step == 0 and resumed.mixture_state.domain_updates == 0
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_a_save_killed_while_writing_the_mixture_state_leaves_a_checkpoint_that_resume_skips(
    synthetic, grape_helpers, tmp_path, monkeypatch
):
    """The mixture state was written after `trainer_state.json` (the file that marks a checkpoint complete): a save
    killed in between left a folder that resume took as complete and then could not restore."""
    from hf_ext.grape.state import MixtureState
    from hf_ext.utils.resume import last_complete_checkpoint

    train, targets = synthetic
    save, calls = MixtureState.save, []

    def dies_on_the_second_checkpoint(self, directory, **kwargs):
        calls.append(directory)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed while writing the mixture state")
        save(self, directory, **kwargs)

    monkeypatch.setattr(MixtureState, "save", dies_on_the_second_checkpoint)
    out = tmp_path / "killed"
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(out, max_steps=4, save_strategy="steps", save_steps=2),
        train_dataset=train,
        target_datasets=targets,
    )
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert [os.path.basename(c) for c in calls] == ["checkpoint-2", "checkpoint-4"]
    assert (out / "checkpoint-4").is_dir() and not (out / "checkpoint-4" / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(out)) == str(out / "checkpoint-2")
    monkeypatch.setattr(MixtureState, "save", save)
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](seed=1),
        args=make_args(tmp_path / "resumed", max_steps=4),
        train_dataset=train,
        target_datasets=targets,
    ).load_mixture_state(str(out / "checkpoint-2"))


class _RecordingTrainer(GrapeTrainer):
    """Records the input_ids of every training micro-batch."""

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.seen = [*getattr(self, "seen", []), (int(self.state.global_step), inputs["input_ids"].tolist())]
        return super().training_step(model, inputs, num_items_in_batch)


def test_resume_with_dataloader_workers_matches_uninterrupted_run(synthetic, grape_helpers, tmp_path):
    """With workers the sampler runs ahead through a whole short epoch, so two updates land on the same sampler position
    and the second replaces the first in the schedule; the sampler kept drawing with the replaced weights (and the
    resumed run, which starts from the checkpoint's schedule, drew other sequences and ended with other weights)."""
    train, targets = synthetic
    over = dict(max_steps=12, samples_per_epoch=16, dataloader_num_workers=2, save_strategy="steps", save_steps=6)
    full = _RecordingTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(tmp_path / "full", **over),
        train_dataset=train,
        target_datasets=targets,
    )
    full.train()
    resumed = _RecordingTrainer(
        model=grape_helpers["tiny_llama"](seed=123),
        args=make_args(tmp_path / "resumed", **over),
        train_dataset=train,
        target_datasets=targets,
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    a, b = full.mixture_state, resumed.mixture_state
    assert len(a.schedule) < a.domain_updates + 1  # some updates replaced the entry of the one before (same position)
    assert [x for s, x in full.seen if s >= 6] == [x for _, x in resumed.seen]
    assert b.trajectory == a.trajectory
    torch.testing.assert_close(b.domain_weights, a.domain_weights, rtol=0, atol=0)
    torch.testing.assert_close(b.task_weights, a.task_weights, rtol=0, atol=0)
    assert [p for p, _ in b.schedule] == [p for p, _ in a.schedule]
    for (_, wa), (_, wb) in zip(a.schedule, b.schedule):
        torch.testing.assert_close(wb, wa, rtol=0, atol=0)


def test_exported_mixture_trains_fresh_model_with_fixed_weights(grape_run, synthetic, grape_helpers, tmp_path):
    _, out = grape_run
    train, _ = synthetic
    exported = json.loads((out / "mixture.json").read_text())["domains"]
    args = make_args(tmp_path / "fixed", reweight_method="fixed", mixture_file=str(out / "mixture.json"), max_steps=3)
    trainer = GrapeTrainer(model=grape_helpers["tiny_llama"](seed=5), args=args, train_dataset=train)
    result = trainer.train()
    st = trainer.mixture_state
    assert st.domain_updates == 0 and len(st.schedule) == 1
    assert dict(zip(st.domain_names, st.domain_weights.tolist())) == pytest.approx(exported)
    assert result.training_loss > 0
    again = json.loads((tmp_path / "fixed" / "mixture.json").read_text())
    assert again["method"] == "fixed" and again["domains"] == pytest.approx(exported)
    # The sampler draws with the exported weights.
    sampler = trainer._mixture_sampler
    sampler.num_samples, sampler.epoch = 6000, 0
    names = [trainer.mixture_state.domain_names[sampler.index_at(i)[0]] for i in range(6000)]
    for d, w in exported.items():
        assert abs(names.count(d) / 6000 - w) < 0.03


def test_zero_step_sizes_keep_weights(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    args = make_args(tmp_path, max_steps=4, domain_step_size=0.0, task_step_size=0.0, task_smoothing=0.0)
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets
    )
    trainer.train()
    st = trainer.mixture_state
    assert st.domain_updates == 2 and st.task_updates == 2
    torch.testing.assert_close(st.domain_weights, torch.full((3,), 1 / 3, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(st.task_weights, torch.full((2,), 0.5, dtype=torch.float64), rtol=0, atol=1e-15)


@pytest.mark.parametrize(
    "overrides,domain_updates,task_updates",
    [
        ({"reweight_method": "doge"}, 2, 0),
        ({"reweight_method": "doremi"}, 2, 0),
        ({"reweight_method": "uniform"}, 0, 0),
        ({"reweight_method": "grape_ema", "step_size_convention": "lr_scaled", "domain_step_size": 1e-3}, 2, 2),
        ({"reweight_method": "grape_gap", "reweight_tasks_every": 4}, 2, 1),
    ],
)
def test_methods_share_the_interface(overrides, domain_updates, task_updates, synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    args = make_args(tmp_path, max_steps=4, **overrides)
    extra = {}
    if overrides["reweight_method"] == "doremi":
        extra["reference_model"] = grape_helpers["tiny_llama"](seed=9)
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets, **extra
    )
    trainer.train()
    st = trainer.mixture_state
    assert st.domain_updates == domain_updates and st.task_updates == task_updates
    assert on_simplex(st.domain_weights) and on_simplex(st.task_weights)
    moved = not torch.allclose(st.domain_weights, torch.full((3,), 1 / 3, dtype=torch.float64))
    assert moved == (domain_updates > 0)
    if overrides["reweight_method"] == "grape_ema":
        assert torch.isfinite(st.task_ema_loss).all()
    assert (tmp_path / "mixture.json").is_file()


def test_streaming_path(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    streams = {
        d: train.filter(lambda r, d=d: r["domain"] == d).remove_columns(["domain"]).to_iterable_dataset()
        for d in ("a", "b", "c")
    }
    args = make_args(tmp_path, max_steps=4)
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](), args=args, train_dataset=streams, target_datasets=targets
    )
    trainer.train()
    assert trainer.mixture_state.domain_updates == 2
    assert trainer.train_dataset.examples_drawn >= 4 * 4
    assert on_simplex(trainer.mixture_state.domain_weights)


def test_pack_by_domain_keeps_domains(corpus, small_tokenizer):
    raw = corpus.select(range(0, len(corpus), 4))
    packed = pack_by_domain(raw, small_tokenizer, 64)
    assert set(packed["domain"]) == set(raw["domain"])
    assert all(len(x) == 64 for x in packed["input_ids"][:20])


def test_text_datasets_are_packed_by_the_trainer(corpus, corpus_test, small_tokenizer, grape_helpers, tmp_path):
    train = corpus.filter(lambda r: r["domain"] in ("text", "numeric"))
    targets = {"numeric": corpus_test.filter(lambda r: r["domain"] == "numeric")}
    args = make_args(tmp_path, max_steps=2, block_size=32)
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](vocab=len(small_tokenizer)),
        args=args,
        train_dataset=train,
        target_datasets=targets,
        processing_class=small_tokenizer,
    )
    trainer.train()
    assert trainer.mixture_state.domain_names == ["numeric", "text"]
    assert trainer.mixture_state.domain_updates == 1


# ---- errors --------------------------------------------------------------------------------------------------------
def _expect_error(exc, match, out, make):
    with pytest.raises(exc, match=match):
        make()
    assert not os.path.exists(os.path.join(out, "mixture.json"))


def test_missing_domain_column_is_a_clear_error(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    args = make_args(tmp_path / "o")
    _expect_error(
        ValueError,
        "no domain column 'domain'.*--domain_column",
        args.output_dir,
        lambda: GrapeTrainer(
            model=grape_helpers["tiny_llama"](),
            args=args,
            train_dataset=train.remove_columns(["domain"]),
            target_datasets=targets,
        ),
    )


def test_target_without_text_is_a_clear_error(synthetic, grape_helpers, tmp_path):
    from datasets import Dataset

    train, targets = synthetic
    args = make_args(tmp_path / "o")
    bad = dict(targets, t_c=Dataset.from_dict({"question": ["q"], "answer": ["a"]}))
    _expect_error(
        ValueError,
        r"target_datasets\['t_c'\] has no text column 'text'",
        args.output_dir,
        lambda: GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=bad),
    )


def test_other_bad_inputs(synthetic, grape_helpers, tmp_path):
    train, targets = synthetic
    model = grape_helpers["tiny_llama"]()
    out = str(tmp_path / "o")
    with pytest.raises(ValueError, match="needs a reference model"):
        GrapeTrainer(model=model, args=make_args(out, reweight_method="doremi"), train_dataset=train)
    with pytest.raises(ValueError, match="--mixture_file"):
        GrapeTrainer(model=model, args=make_args(out, reweight_method="fixed"), train_dataset=train)
    with pytest.raises(ValueError, match="needs target_datasets"):
        GrapeTrainer(model=model, args=make_args(out), train_dataset=train)
    with pytest.raises(TypeError, match="GrapeConfig"):
        from transformers import TrainingArguments

        GrapeTrainer(model=model, args=TrainingArguments(output_dir=out), train_dataset=train)
    with pytest.raises(ValueError, match="domain_weights must name exactly"):
        GrapeTrainer(
            model=model, args=make_args(out), train_dataset=train, target_datasets=targets, domain_weights={"a": 1.0}
        )
    with pytest.raises(ValueError, match="reweight_method must be one of"):
        make_args(out, reweight_method="regmix")
    with pytest.raises(ValueError, match="multiple of reweight_mini_batch_size"):
        make_args(out, reweight_batch_size=5, reweight_mini_batch_size=2)
    with pytest.raises(ValueError, match="task_smoothing"):
        make_args(out, task_smoothing=1.5)
    with pytest.raises(ValueError, match="step_size_convention"):
        make_args(out, step_size_convention="inverse")
    with pytest.raises(ValueError, match="max_steps"):
        GrapeTrainer(
            model=model,
            args=make_args(out, max_steps=-1),
            train_dataset={"a": train.to_iterable_dataset()},
            target_datasets=targets,
        )
    assert not os.path.exists(os.path.join(out, "mixture.json"))


def test_empty_train_dataset_is_rejected(synthetic, grape_helpers, tmp_path):
    """An empty source dataset used to train silently and export an empty mixture."""
    train, targets = synthetic
    args = make_args(tmp_path / "o")
    _expect_error(
        ValueError,
        "train_dataset has no rows",
        args.output_dir,
        lambda: GrapeTrainer(
            model=grape_helpers["tiny_llama"](), args=args, train_dataset=train.select([]), target_datasets=targets
        ),
    )
    assert not os.path.exists(args.output_dir) or not os.listdir(args.output_dir)


def test_mixture_file_with_other_domains_names_the_file(synthetic, grape_helpers, tmp_path):
    """The error used to say `domain_weights must name exactly ...`, an argument the user had not passed."""
    train, _ = synthetic
    mixture = tmp_path / "other_run_mixture.json"
    mixture.write_text(json.dumps({"a": 0.5, "b": 0.5, "zz": 0.0}))
    args = make_args(tmp_path / "o", reweight_method="fixed", mixture_file=str(mixture))
    _expect_error(
        ValueError,
        r"--mixture_file '.*other_run_mixture\.json' \(mixture_key='final'\) must name exactly \['a', 'b', 'c'\]; "
        r"unknown \['zz'\], missing \['c'\]",
        args.output_dir,
        lambda: GrapeTrainer(model=grape_helpers["tiny_llama"](), args=args, train_dataset=train),
    )


def test_reentrant_gradient_checkpointing_is_rejected(synthetic, grape_helpers, tmp_path):
    """The update takes gradients with torch.autograd.grad, which reentrant checkpointing refuses: the run crashed at
    the first reweighting step, after training had started."""
    train, targets = synthetic
    reentrant = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    args = make_args(tmp_path / "o", **reentrant)
    _expect_error(
        ValueError,
        r"gradient_checkpointing_kwargs=\{'use_reentrant': True\}.*set gradient_checkpointing_kwargs="
        r"\{'use_reentrant': False\}",
        args.output_dir,
        lambda: GrapeTrainer(
            model=grape_helpers["tiny_llama"](), args=args, train_dataset=train, target_datasets=targets
        ),
    )
    # Also when the model itself was prepared with reentrant checkpointing (as peft's k-bit preparation may do).
    model = grape_helpers["tiny_llama"]()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match="use_reentrant=True.*use_reentrant': False"):
        GrapeTrainer(model=model, args=make_args(tmp_path / "p"), train_dataset=train, target_datasets=targets)
    # Methods that take no gradients at updates are unaffected.
    GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(tmp_path / "q", reweight_method="uniform", **reentrant),
        train_dataset=train,
    )
    # The non-reentrant setting (transformers 5's default) trains through the updates.
    trainer = GrapeTrainer(
        model=grape_helpers["tiny_llama"](),
        args=make_args(
            tmp_path / "r",
            max_steps=2,
            gradient_checkpointing=True,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        ),
        train_dataset=train,
        target_datasets=targets,
    )
    trainer.train()
    assert trainer.mixture_state.domain_updates == 1
