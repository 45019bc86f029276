"""metadata_pretrain records the arguments that shape its data and metadata, and a resume must keep them.

A `--layout meco` run started before 2026-12-04 without `--template` trained on the full URL (`url`); since then that
command line resolves to `url_host`. Without a record, such a resume (or any `--template` / `--layout` /
`--max_metadata_tokens` change) silently trained its remaining steps, evaluated and guided with other metadata.
"""

import json
import logging
import os
import shutil

import pytest

from hf_ext.recipes.metadata_pretrain import RUN_DATA_FILE, main

from .test_recipe import TINY


def _common(out):
    return [*TINY, "--layout", "meco", "--max_steps", "4", "--run_baseline", "false", "--save_strategy", "steps",
            "--save_steps", "2", "--output_dir", str(out)]  # fmt: skip


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A meco run with --template url (the old default), interrupted after checkpoint-2 (its results are kept)."""
    out = tmp_path_factory.mktemp("md_run_data") / "run"
    main([*_common(out), "--template", "url"])
    shutil.rmtree(out / "url_conditioned" / "checkpoint-4")
    return out


def _snapshot(out):
    return {p: os.path.getmtime(p) for p in map(str, out.rglob("*")) if os.path.isfile(p)}


def test_fresh_run_records_the_resolved_options(interrupted):
    record = json.loads((interrupted / RUN_DATA_FILE).read_text())
    assert record["template"] == "url" and record["layout"] == "meco" and record["max_metadata_tokens"] == 32
    assert record["metadata_dropout"] == 0.1 and record["cooldown_fraction"] == 0.1 and record["seed"] == 42
    assert record["block_size"] == 64 and record["vocab_size"] == 512


@pytest.mark.parametrize(
    "change, flag, now, before",
    [
        ([], "--template", "url_host", "url"),  # the same command line resolves to the new meco default
        (["--template", "url_host"], "--template", "url_host", "url"),
        (["--template", "url", "--layout", "context"], "--layout", "context", "meco"),
        (["--template", "url", "--max_metadata_tokens", "16"], "--max_metadata_tokens", "16", "32"),
        (["--template", "url", "--max_metadata_tokens", "none"], "--max_metadata_tokens", "none", "32"),
        (["--template", "url", "--metadata_dropout", "0.2"], "--metadata_dropout", "0.2", "0.1"),
        # the model flags too (rv21b F3: another head count of the same width loaded and trained on as another model)
        (["--template", "url", "--num_attention_heads", "2"], "--num_attention_heads", "2", "4"),
    ],
)
def test_resume_with_other_metadata_is_refused_before_any_work(interrupted, change, flag, now, before):
    files = _snapshot(interrupted)
    with pytest.raises(ValueError) as err:
        main([*_common(interrupted), *change, "--resume_from_checkpoint"])
    message = str(err.value)
    assert f"{flag} {now} (the interrupted run used {before})" in message
    assert f"Resume with {flag} {before}" in message
    assert _snapshot(interrupted) == files  # nothing written, nothing removed


def test_resume_with_the_same_options_continues(interrupted, tmp_path, caplog):
    out = tmp_path / "copy"
    shutil.copytree(interrupted, out)
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.metadata_pretrain"):
        results = main([*_common(out), "--template", "url", "--resume_from_checkpoint"])
    assert RUN_DATA_FILE not in caplog.text
    assert results["guidance_example"]["metadata"].startswith("https://")  # the full URL, as the run trained
    assert (out / "url_conditioned" / "checkpoint-4").is_dir()


def _as_written_before_records(out):
    """A run started before hf_ext recorded its options: no run record, and checkpoints whose
    metadata_conditioning.json holds no collator settings (recorded since 2026-12-05)."""
    os.remove(out / RUN_DATA_FILE)
    for path in out.rglob("metadata_conditioning.json"):
        record = json.loads(path.read_text())
        record.pop("collator", None)
        path.write_text(json.dumps(record))


def test_resume_without_a_record_warns_about_the_meco_default(interrupted, tmp_path, caplog):
    out = tmp_path / "old"
    shutil.copytree(interrupted, out)
    _as_written_before_records(out)
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.metadata_pretrain"):
        main([*_common(out), "--resume_from_checkpoint"])
    warning = next(r.getMessage() for r in caplog.records if RUN_DATA_FILE in r.getMessage())
    assert "resumed unchecked" in warning
    assert "url_host" in warning and "2026-12-04" in warning and "--template url" in warning
    assert not (out / RUN_DATA_FILE).exists()  # a resume records nothing it could not check


def test_resume_without_a_record_and_explicit_template_has_no_meco_note(interrupted, tmp_path, caplog):
    out = tmp_path / "old_explicit"
    shutil.copytree(interrupted, out)
    _as_written_before_records(out)
    with caplog.at_level(logging.WARNING, logger="hf_ext.recipes.metadata_pretrain"):
        main([*_common(out), "--template", "url", "--resume_from_checkpoint"])
    warning = next(r.getMessage() for r in caplog.records if RUN_DATA_FILE in r.getMessage())
    assert "resumed unchecked" in warning and "2026-12-04" not in warning


def test_unreadable_record_is_refused(interrupted, tmp_path):
    out = tmp_path / "broken"
    shutil.copytree(interrupted, out)
    (out / RUN_DATA_FILE).write_text("[1, 2")
    with pytest.raises(ValueError, match="cannot be read"):
        main([*_common(out), "--template", "url", "--resume_from_checkpoint"])


def test_resume_without_a_run_record_still_refuses_a_template_its_checkpoint_records(interrupted, tmp_path):
    """The recipe's record gone but the checkpoint's metadata_conditioning.json (2026-12-05 on) names the template:
    the trainer-level check refuses the recipe's new default (url_host) for a url-conditioned checkpoint."""
    out = tmp_path / "no_run_record"
    shutil.copytree(interrupted, out)
    os.remove(out / RUN_DATA_FILE)
    with pytest.raises(ValueError, match=r"MetadataCollator template=\{'kind': 'url',"):
        main([*_common(out), "--resume_from_checkpoint"])
