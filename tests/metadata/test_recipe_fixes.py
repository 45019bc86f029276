"""metadata_pretrain recipe: a named checkpoint resumes the run it belongs to (baseline or URL-conditioned), and
checkpoints of another run in --output_dir are refused before any work."""

import json

import pytest

from hf_ext.recipes import metadata_pretrain as mp


def _checkpoint(folder, step, run=None):
    folder.mkdir(parents=True)
    state = {"global_step": step}
    if run is not None:
        state["stateful_callbacks"] = {"DocumentLossCallback": {"args": {"eval_steps": 2},
                                                                "attributes": {"curve": [], "run": run}}}  # fmt: skip
    (folder / "trainer_state.json").write_text(json.dumps(state))
    return folder


class _Args:
    def __init__(self, out, value, max_steps=8):
        self.output_dir, self.resume_from_checkpoint, self.max_steps = str(out), value, max_steps


def test_named_baseline_checkpoint_resumes_the_baseline(tmp_path):
    """`--resume_from_checkpoint out/baseline/checkpoint-4` used to resume the URL-conditioned model from the
    baseline's weights (and restart the baseline from scratch)."""
    out = tmp_path / "out"
    url_last = _checkpoint(out / "url_conditioned" / "checkpoint-8", 8)
    base = _checkpoint(out / "baseline" / "checkpoint-4", 4)
    mp._check_resume(_Args(out, str(base)))
    assert mp._sub_run_resume(str(base), str(out / "url_conditioned"), "url_conditioned") == str(url_last)
    assert mp._sub_run_resume(str(base), str(out / "baseline"), "baseline") == str(base)
    url_named = str(out / "url_conditioned" / "checkpoint-8")
    assert mp._sub_run_resume(url_named, str(out / "url_conditioned"), "url_conditioned") == url_named
    assert mp._sub_run_resume(url_named, str(out / "baseline"), "baseline") == str(base)


def test_run_mark_decides_for_a_checkpoint_outside_the_run_folders(tmp_path):
    marked = _checkpoint(tmp_path / "elsewhere" / "checkpoint-4", 4, run="baseline")
    assert mp.checkpoint_run(str(marked)) == "baseline"
    out = tmp_path / "out"
    assert mp._sub_run_resume(str(marked), str(out / "url_conditioned"), "url_conditioned") is None
    assert mp._sub_run_resume(str(marked), str(out / "baseline"), "baseline") == str(marked)
    unmarked = _checkpoint(tmp_path / "copy" / "checkpoint-4", 4)
    with pytest.raises(ValueError, match="cannot tell which run"):
        mp._check_resume(_Args(out, str(unmarked)))
    with pytest.raises(ValueError, match="baseline run, which --run_baseline false does not train"):
        mp._check_resume(_Args(out, str(marked)), run_baseline=False)


def test_fresh_run_over_checkpoints_and_resume_past_max_steps_are_refused(tmp_path):
    out = tmp_path / "out"
    _checkpoint(out / "baseline" / "checkpoint-12", 12)
    with pytest.raises(ValueError, match="checkpoint-12 exists.*earlier run"):
        mp._check_resume(_Args(out, None))
    mp._check_resume(_Args(out, None), run_baseline=False)  # the baseline folder is not trained
    with pytest.raises(ValueError, match="global_step 12.*--max_steps 8"):
        mp._check_resume(_Args(out, "last"))


TINY = ["--max_steps", "8", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads", "2",
        "--vocab_size", "300", "--block_size", "64", "--per_device_train_batch_size", "4", "--logging_steps", "1",
        "--doc_eval_steps", "2", "--max_eval_docs", "8", "--guidance_max_new_tokens", "1", "--cooldown_fraction",
        "0.25", "--save_strategy", "steps", "--save_steps", "4", "--disable_tqdm", "true"]  # fmt: skip


def test_interrupted_baseline_resumed_by_name_matches_the_uninterrupted_run(tmp_path):
    """The audit's case end to end: the URL run finished, the baseline stopped after step 4; resuming with its named
    checkpoint gives the uninterrupted results (the URL model's used to change: it had continued from the
    baseline's weights)."""
    import shutil

    out = tmp_path / "run"
    full = mp.main([*TINY, "--output_dir", str(out)])
    shutil.rmtree(out / "baseline" / "checkpoint-8")
    resumed = mp.main([*TINY, "--output_dir", str(out), "--resume_from_checkpoint",
                       str(out / "baseline" / "checkpoint-4")])  # fmt: skip
    for key, value in full["final"].items():
        assert resumed["final"][key] == pytest.approx(value, rel=1e-4), key
    for name, curve in full["curves"].items():
        assert [s for s, _ in resumed["curves"][name]] == [s for s, _ in curve], name
        assert [v for _, v in resumed["curves"][name]] == pytest.approx([v for _, v in curve], rel=1e-4), name
