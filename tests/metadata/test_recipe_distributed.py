"""The metadata recipe under two gloo ranks: data-parallel training, evaluation and files once, on the main process."""

from __future__ import annotations

import json
import os
import sys

import pytest

from .test_recipe import TINY

_LAUNCH: dict = {}


@pytest.fixture
def ddp_checks(tmp_path_factory, repo_root, run_on_free_port, launch_failure):
    """`(folder, stdout)` of ONE `torchrun --nproc_per_node 2` launch of scripts/ddp_checks.py, shared by this module's
    tests (each check used to be a launch of its own; a launch costs each rank ~10 s of imports): ddp_invalid_count.py
    and ddp_iterable_cooldown.py into `folder`, then the recipe (4 steps, into `folder/md`)."""
    if "out" not in _LAUNCH:
        out = tmp_path_factory.mktemp("md_ddp")
        recipe = [
            *TINY, "--max_steps", "4", "--output_dir", str(out / "md"), "--use_cpu", "true", "--report_to", "none",
        ]  # fmt: skip
        script = os.path.join(repo_root, "tests", "metadata", "scripts", "ddp_checks.py")
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": repo_root, "HF_HUB_OFFLINE": "1"}
        res = run_on_free_port(
            lambda port: [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(port), script, str(out), *recipe],
            cwd=repo_root, timeout=900, env=env,
        )  # fmt: skip
        assert res.returncode == 0, launch_failure(res.stderr)
        _LAUNCH["out"] = (out, res.stdout)
    return _LAUNCH["out"]


@pytest.mark.distributed
def test_two_ranks_evaluate_and_write_once(ddp_checks):
    """Before the per-rank guards every rank evaluated both models, generated and wrote the same files."""
    folder, stdout = ddp_checks
    out = folder / "md"
    assert stdout.count("held-out document loss") == 1
    assert stdout.count("guided generation for") == 1
    results = json.loads((out / "metadata_results.json").read_text())
    assert results["world_size"] == 2
    assert set(results["final"]) == {"url_model_with_context", "url_model_without_context", "baseline"}
    assert [s for s, _ in results["curves"]["with URL context"]] == [2, 4]
    assert os.path.isfile(out / "url_conditioned" / "tokenizer.json")


@pytest.mark.distributed
def test_logged_invalid_count_is_the_total_over_ranks_also_after_resume(ddp_checks):
    """Every rank logs, and checkpoint-4 stores, the invalid examples of both ranks' micro-batches: 4 per epoch of 4
    steps (was: each rank's own share, which the main process wrote into the checkpoint)."""
    records = json.loads((ddp_checks[0] / "ddp_invalid_count.json").read_text())
    assert [r["world_size"] for r in records] == [2, 2]
    for r in records:
        assert r["full"] == {"4": 4, "8": 8} | {str(s): r["full"][str(s)] for s in (1, 2, 3, 5, 6, 7)}
        assert r["stored_at_4"] == 4
        assert r["resumed"] == r["full"]  # steps 1-4 come back with the checkpoint's log history
    assert records[0]["full"] == records[1]["full"]


@pytest.mark.distributed
def test_iterable_dataset_on_two_ranks_switches_and_counts_as_one_process(tmp_path, ddp_checks, ctx_tokenizer):
    """An IterableDataset on 2 ranks: accelerate dispatches batches (the main process's collator builds both ranks'
    micro-batches). Every rank trains steps 1..switch_step with metadata and the rest without, as one process does,
    and logs the one-process metadata_invalid, with dispatch (also resumed from checkpoint-4, before the switch),
    without it and with split_batches. Was: the cooldown started after step 3 of 6 (rank 0's collator ran twice as
    fast as the counter), metadata_invalid was half the count."""
    import importlib.util

    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_iterable_cooldown.py")
    spec = importlib.util.spec_from_file_location("ddp_iterable_cooldown", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    reference = module.run(str(tmp_path / "one"), ctx_tokenizer)  # one process
    assert reference["switch_step"] == 6
    steps = range(1, module.MAX_STEPS + 1)
    assert reference["micro_batches"] == [[s, s <= 6] for s in steps for _ in range(module.GRAD_ACCUM)]
    assert reference["logged"][str(module.MAX_STEPS)] == [0, 16]  # every 4th of 64 documents

    packed_reference = module.run(str(tmp_path / "one_packed"), ctx_tokenizer, packed=True)
    assert packed_reference["use_cache"] == ["False"]
    assert packed_reference["micro_batches"] == reference["micro_batches"]

    records = json.loads((ddp_checks[0] / "ddp_iterable_cooldown.json").read_text())
    assert [r["world_size"] for r in records] == [2, 2]
    for r in records:
        assert r["dispatch"]["loader"] == r["split"]["loader"] == "DataLoaderDispatcher"
        assert r["no_dispatch"]["loader"] == "DataLoaderShard"
        for run in ("dispatch", "no_dispatch", "split"):
            assert r[run]["micro_batches"] == reference["micro_batches"], run
            assert r[run]["logged"] == reference["logged"], run
        assert r["stored_at_4"]["metadata_invalid"] == 8
        assert r["stored_at_4"]["conditioning_next_step"] is True
        # the resumed run trains steps 5-8 as the uninterrupted one (steps 1-4 come back with the log history)
        assert r["resumed"]["micro_batches"] == [m for m in reference["micro_batches"] if m[0] > 4]
        assert r["resumed"]["logged"] == reference["logged"]
        assert r["dispatch"]["use_cache"] == ["None"]  # padded batches carry no use_cache
        # packed with document_attention, dispatched: trained (it failed at the first step with accelerate's "Can
        # only concatenate tensors but got <class 'bool'>"), switched as one process does, the model called with
        # use_cache=False (the per-document masks need it)
        assert r["packed"]["loader"] == "DataLoaderDispatcher"
        assert r["packed"]["micro_batches"] == packed_reference["micro_batches"]
        assert r["packed"]["logged"] == packed_reference["logged"]
        assert r["packed"]["use_cache"] == ["False"]
