"""The metadata_pretrain recipe: the document-loss curve and steps-to-match, the flags that reach the training
collator and the guided-generation example, the conditions each final loss is measured under, boundary checks, and
a resumed run keeping the results of the run it continues."""

import json
import types

import pytest

from hf_ext.recipes import metadata_pretrain as mp

TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "4",
        "--block_size", "64", "--per_device_train_batch_size", "2", "--max_eval_docs", "2", "--doc_eval_steps", "2",
        "--guidance_max_new_tokens", "2", "--disable_tqdm", "true", "--vocab_size", "512"]  # fmt: skip


def test_steps_to_reach_counts_the_first_step_at_or_below_the_target():
    curve = [(2, 3.0), (4, 2.0), (6, 1.5)]
    assert mp.steps_to_reach(curve, 2.0) == 4
    assert mp.steps_to_reach(curve, 1.0) is None


def test_document_loss_curve_has_every_eval_step_and_the_last_step(monkeypatch):
    """The curve is evaluated every --doc_eval_steps and at the final step (the baseline's final loss is its last
    point)."""
    monkeypatch.setattr(mp, "document_loss", lambda model, collator, docs: 1.0)
    cb = mp.DocumentLossCallback(None, [], eval_steps=3)
    for step in range(1, 8):
        cb.on_step_end(None, types.SimpleNamespace(global_step=step, max_steps=7), None, model=None)
    assert [s for s, _ in cb.curve] == [3, 6, 7]


def test_resumed_curve_keeps_the_point_of_the_checkpoint_step():
    saved = {"DocumentLossCallback": {"attributes": {"curve": [[2, 1.0], [4, 0.9], [6, 0.8]]}}}
    cb = mp.DocumentLossCallback(None, [], eval_steps=2)
    cb.on_train_begin(None, types.SimpleNamespace(global_step=4, stateful_callbacks=saved), None)
    assert cb.curve == [(2, 1.0), (4, 0.9)]


def test_metadata_dropout_reaches_the_training_collator(monkeypatch, tmp_path):
    import hf_ext.metadata as metadata

    seen = {}

    class Stop(Exception):
        pass

    def fake_trainer(model=None, args=None, data_collator=None, **kw):
        seen["collator"] = data_collator
        raise Stop

    monkeypatch.setattr(metadata, "MetadataTrainer", fake_trainer)
    with pytest.raises(Stop):
        mp.main([*TINY, "--max_steps", "2", "--metadata_dropout", "0.35", "--output_dir", str(tmp_path / "out")])
    assert seen["collator"].metadata_dropout == 0.35 and seen["collator"].layout == "context"


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--cooldown_fraction", "1.0"], "--cooldown_fraction must be in"),
        # BOS + both context markers + 32 metadata tokens fill 35 tokens: no room for a document token
        (["--block_size", "35", "--max_metadata_tokens", "32"], "leaves no room for a document"),
    ],
)
def test_out_of_range_values_are_refused_before_writing(tmp_path, extra, match):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=match):
        mp.main([*TINY, "--max_steps", "2", *extra, "--output_dir", str(out)])
    assert not out.exists()


def test_final_losses_are_measured_under_their_conditions(monkeypatch, tmp_path):
    """url_model_with_context: the URL in the context; url_model_without_context: the dropped-metadata form; baseline:
    plain [BOS] document, as it trained. The guided example uses --guidance_scale."""
    import hf_ext.metadata as metadata

    collators, scales = [], []

    def fake_train_one(name, conditioned, *a, **k):
        return types.SimpleNamespace(eval=lambda: None), [(2, 1.0)], [], [(2, 1.5)]

    def fake_loss(model, collator, docs):
        collators.append((collator, docs))
        return float(len(collators) - 1)

    def fake_generate(model, tokenizer, prompts, metadata, guidance_scale=1.0, **kw):
        scales.append(guidance_scale)
        return ["x"] * len(prompts)

    monkeypatch.setattr(mp, "_train_one", fake_train_one)
    monkeypatch.setattr(mp, "document_loss", fake_loss)
    monkeypatch.setattr(metadata, "generate_with_metadata_guidance", fake_generate)
    res = mp.main([*TINY, "--max_steps", "2", "--guidance_scale", "2.5", "--output_dir", str(tmp_path / "out")])
    assert sorted(scales) == [1.0, 2.5] and "scale_2.5" in res["guidance_example"]

    def decoded(key):
        collator, docs = collators[int(res["final"][key])]
        text = collator.tokenizer.decode(collator(docs[:1])["input_ids"][0], skip_special_tokens=False)
        return text, docs[0]["url"].split("//")[1].split("/")[0]

    text, host = decoded("url_model_with_context")
    assert host in text.split("<|context_begin|>")[1].split("<|context_end|>")[0]
    text, host = decoded("url_model_without_context")
    assert text.split("<|context_begin|>")[1].split("<|context_end|>")[0].strip() == ""
    text, host = decoded("baseline")
    assert "<|context_begin|>" not in text and "URL:" not in text


def test_resumed_run_keeps_the_results_of_the_run_it_continues(monkeypatch, tmp_path):
    """A fresh run removes an earlier run's result files; a resumed run continues that run, so they stay."""
    out = tmp_path / "out"
    ckpt = out / "url_conditioned" / "checkpoint-2"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    (out / "metadata_results.json").write_text("{}")

    class Stop(Exception):
        pass

    def stop(*a, **k):
        raise Stop

    monkeypatch.setattr(mp, "_train_one", stop)
    with pytest.raises(Stop):
        mp.main([*TINY, "--max_steps", "4", "--resume_from_checkpoint", "--output_dir", str(out)])
    assert (out / "metadata_results.json").exists()
