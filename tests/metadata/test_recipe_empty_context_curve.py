"""mc19 finding 1: the recipe records the URL model's document loss in the empty context at every curve step, and
its steps to the baseline's final loss, so the reproduction can judge the speed-up as a benchmark without URLs sees
it (with its URL the model is handed the host, which decides most words of the synthetic corpus)."""

import logging
import types

import pytest

from hf_ext.recipes import metadata_pretrain as mp

TINY = ["--hidden_size", "32", "--intermediate_size", "64", "--num_hidden_layers", "1", "--num_attention_heads", "4",
        "--block_size", "64", "--per_device_train_batch_size", "2", "--max_eval_docs", "3", "--doc_eval_steps", "2",
        "--guidance_max_new_tokens", "2", "--disable_tqdm", "true", "--vocab_size", "512"]  # fmt: skip


def test_recipe_records_the_empty_context_curve_and_its_steps_to_match(tmp_path):
    res = mp.main([*TINY, "--max_steps", "4", "--output_dir", str(tmp_path / "out")])
    curve, empty = res["curves"]["with URL context"], res["curves"]["URL model, empty context"]
    assert [s for s, _ in empty] == [s for s, _ in curve] == [2, 4]
    # the last point is the final empty-context loss, measured in the same form after training
    assert empty[-1][1] == pytest.approx(res["final"]["url_model_without_context"], abs=1e-5)
    assert curve[-1][1] == pytest.approx(res["final"]["url_model_with_context"], abs=1e-5)
    assert empty != curve  # another condition, not a copy of the with-URL curve
    to_match = res["steps_to_baseline_final_loss"]
    target = res["curves"]["baseline (no metadata)"][-1][1]
    assert to_match["url_conditioned_without_context"] == mp.steps_to_reach(empty, target)
    assert to_match["url_conditioned"] == mp.steps_to_reach(curve, target)


def test_callback_records_both_curves_and_keeps_them_in_its_state(monkeypatch):
    monkeypatch.setattr(mp, "document_loss", lambda model, collator, docs: {"url": 1.0, "empty": 2.0}[collator])
    cb = mp.DocumentLossCallback("url", [], eval_steps=2, run="url_conditioned", empty_collator="empty")
    for step in range(1, 6):
        cb.on_step_end(None, types.SimpleNamespace(global_step=step, max_steps=5), None, model=None)
    assert cb.curve == [(2, 1.0), (4, 1.0), (5, 1.0)] and cb.empty_curve == [(2, 2.0), (4, 2.0), (5, 2.0)]
    attributes = cb.state()["attributes"]
    assert attributes["empty_curve"] == [[2, 2.0], [4, 2.0], [5, 2.0]]
    restored = mp.DocumentLossCallback("url", [], eval_steps=2, empty_collator="empty")
    restored.on_train_begin(None, types.SimpleNamespace(global_step=4, stateful_callbacks={
        "DocumentLossCallback": {"attributes": attributes}}), None)  # fmt: skip
    assert restored.curve == [(2, 1.0), (4, 1.0)] and restored.empty_curve == [(2, 2.0), (4, 2.0)]
    # the baseline has no empty-context curve of its own: none is stored
    assert "empty_curve" not in mp.DocumentLossCallback("plain", [], eval_steps=2).state()["attributes"]


def test_a_checkpoint_without_the_empty_curve_resumes_with_a_warning(caplog):
    cb = mp.DocumentLossCallback("url", [], eval_steps=2, empty_collator="empty")
    saved = {"DocumentLossCallback": {"attributes": {"curve": [[2, 1.0], [4, 0.9]]}}}
    with caplog.at_level(logging.WARNING, logger=mp.__name__):
        cb.on_train_begin(None, types.SimpleNamespace(global_step=4, stateful_callbacks=saved), None)
    assert cb.curve == [(2, 1.0), (4, 0.9)] and cb.empty_curve == []
    assert "no empty-context document-loss curve" in caplog.text


@pytest.mark.parametrize("empty, expected", [([(2, 2.5), (4, 1.9)], 4), ([(4, 1.9)], None)])
def test_steps_without_context_only_from_a_complete_curve(monkeypatch, tmp_path, empty, expected):
    """A curve missing its early points (a resume from a checkpoint written before it was recorded) would name a
    later step than the truth: the steps-to-match is then not reported."""

    def fake_train_one(name, conditioned, *a, **k):
        model = types.SimpleNamespace(eval=lambda: None)
        if conditioned:
            return model, [(2, 1.5), (4, 1.0)], [], empty
        return model, [(2, 2.2), (4, 2.0)], [], []

    monkeypatch.setattr(mp, "_train_one", fake_train_one)
    monkeypatch.setattr(mp, "document_loss", lambda model, collator, docs: 1.0)
    import hf_ext.metadata as metadata

    monkeypatch.setattr(metadata, "generate_with_metadata_guidance", lambda model, tok, prompts, *a, **k: ["x"] * len(prompts))
    res = mp.main([*TINY, "--max_steps", "4", "--output_dir", str(tmp_path / "out")])
    assert res["steps_to_baseline_final_loss"] == {
        "url_conditioned": 2, "url_conditioned_without_context": expected, "baseline": 4}  # fmt: skip
