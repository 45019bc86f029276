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


@pytest.mark.distributed
def test_two_ranks_train_what_one_process_trains_at_twice_the_batch_and_resume_on_two_or_one(tmp_path, ddp_checks):
    """MetadataTrainer with a cooldown and metadata dropout, a map-style dataset (scripts/ddp_scale.py): 2 ranks x 2
    documents train the parameters one process trains at 4 (documents of 2 to 20 words: the ranks' micro-batches hold
    different token counts, which transformers averages over the ranks), switch after the same step and log the same
    values; both ranks hold the same parameters; the 2-rank checkpoint-3 resumes bit for bit on 2 ranks, and on one
    process at 4 documents a step to the same parameters. Packed rows (`block_size`) are identical on both ranks; they
    are packed per micro-batch, so a document is cut where its own micro-batch's rows end (2 x 2 documents are other
    rows than 4 documents in one process: not compared)."""
    import importlib.util

    import torch

    from hf_ext.data import build_tokenizer
    from hf_ext.metadata import add_context_tokens

    script = os.path.join(os.path.dirname(__file__), "scripts", "ddp_scale.py")
    spec = importlib.util.spec_from_file_location("ddp_scale", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = ddp_checks[0] / "ddp_scale"

    def launched(run, rank):
        params = torch.load(out / run / f"params_rank{rank}.pt", weights_only=True)
        return params, json.loads((out / run / f"logs_rank{rank}.json").read_text())

    for run in ("padded", "resumed", "packed"):
        (p0, logs0), (p1, logs1) = launched(run, 0), launched(run, 1)
        assert torch.equal(p0, p1) and logs0 == logs1, run
    two, two_logs = launched("padded", 0)
    tok = build_tokenizer(512)
    add_context_tokens(tok)
    one, one_logs = module.run(str(tmp_path / "one"), tok, batch_size=4)
    assert [v[1] for v in one_logs.values()] == [1, 1, 1, 0, 0, 0]  # the cooldown after step 3 of 6
    assert [v[1:] for v in two_logs.values()] == [v[1:] for v in one_logs.values()]
    assert [v[0] for v in two_logs.values()] == pytest.approx([v[0] for v in one_logs.values()], rel=1e-6)
    torch.testing.assert_close(two, one, rtol=0, atol=1e-5)
    assert (two - one).norm() / one.norm() < 1e-6  # 1.4e-7 (float32 sums in another order)
    resumed, resumed_logs = launched("resumed", 0)
    assert torch.equal(resumed, two) and resumed_logs == two_logs
    alone, alone_logs = module.run(str(tmp_path / "alone"), tok, batch_size=4, resume=str(out / "padded_checkpoint-3"))
    assert [v[1:] for v in alone_logs.values()] == [v[1:] for v in two_logs.values()]
    torch.testing.assert_close(alone, two, rtol=0, atol=1e-5)
