"""Fixes from the data/CLI audit: reproduce verdicts and reporting, CLI usage errors, the
tokenizer's special tokens and cache publishing, the corpus cache's truncation check, FSDP2 fingerprints, the
import-noise filter, and smaller argument checks."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import pytest

from hf_ext.cli import main
from hf_ext.reproduce import Claim, Reproduction, mean_spread, rejudge, reproduce
from hf_ext.reproduce.methods import REPRODUCTIONS


def _toy(monkeypatch, name, claims, seen=None, **kwargs):
    def run(seed, fast, workdir):
        if seen is not None:
            seen.append(seed)
        return {"seed": seed, "gap": 1.0 + seed}

    spec = Reproduction(name, "toy", run, claims, **kwargs)
    monkeypatch.setitem(REPRODUCTIONS, name, spec)
    return spec


# ------------------------------------------------------------------------------------------ F1: verdicts
def test_a_reproduction_that_asserts_no_claim_is_reported_only_not_holds(monkeypatch, tmp_path, capsys):
    """Was: `all()` over no asserted claim made `holds` True and the command exit 0, whatever the numbers."""
    bad = Claim("worse", "-", lambda runs: ("-1.0", False), asserted=False)
    good = Claim("better", "-", lambda runs: ("1.0", True), asserted=False)
    _toy(monkeypatch, "toy_unasserted", [bad, good])
    report = reproduce("toy_unasserted", seeds=2, output_dir=str(tmp_path))
    assert report.holds is None and report.verdict == "reported only" and report.exit_code == 3
    md = report.to_markdown()
    assert "Verdict: reported only" in md and "asserts no claim" in md and "Verdict: holds" not in md
    assert json.loads((tmp_path / "reproduction.json").read_text())["verdict"] == "reported only"
    assert main(["reproduce", "toy_unasserted", "--seeds", "2"]) == 3
    assert "Verdict: reported only" in capsys.readouterr().out
    # the other two verdicts keep their exit codes, and the line says which
    _toy(monkeypatch, "toy_asserted", [Claim("ok", "-", lambda runs: ("1", True)), bad])
    assert (
        reproduce("toy_asserted", seeds=1).holds is True and main(["reproduce", "toy_asserted", "--seeds", "1"]) == 0
    )
    assert "Verdict: holds (every asserted claim: 1 of 2 claims)." in capsys.readouterr().out
    _toy(monkeypatch, "toy_failing", [Claim("no", "-", lambda runs: ("0", False)), good])
    assert reproduce("toy_failing", seeds=1).holds is False and main(["reproduce", "toy_failing", "--seeds", "1"]) == 1
    assert "Verdict: does not hold (1 of 1 asserted claims do not hold)." in capsys.readouterr().out
    # rejudge gives the same verdict from the saved seeds
    assert rejudge(str(tmp_path)).holds is None


def test_grape_corpus_is_reported_only_through_the_cli(monkeypatch, capsys, tmp_path):
    """The audit's case: grape_corpus with GRAPE clearly worse than uniform exited 0 with `holds`."""

    def worse(seed, fast, workdir):
        return {m: {"mean_target_loss": loss, "target_loss": {"a": loss, "b": loss}, "task_weights": {}}
                for m, loss in (("grape", 4.0), ("uniform", 3.0))}  # fmt: skip

    spec = REPRODUCTIONS["grape_corpus"]
    assert spec.claims and not any(c.asserted for c in spec.claims)
    monkeypatch.setattr(spec, "run", worse)
    assert main(["reproduce", "grape_corpus", "--output_dir", str(tmp_path)]) == 3
    out = capsys.readouterr().out
    assert "Verdict: reported only" in out and "does not hold (reported, not asserted)" in out


def test_one_seed_prints_no_spread(monkeypatch):
    """Was: "± 0.000" with one seed, though the docs call the spread a sample standard deviation (undefined at n=1)."""
    assert mean_spread([2.5]) == "2.500 (one seed: no spread)"
    assert mean_spread([1.0, 3.0]) == f"2.000 ± {math.sqrt(2):.3f} (1.000..3.000)"
    _toy(monkeypatch, "toy_one", [Claim("gap", "-", lambda runs: (mean_spread([r["gap"] for r in runs]), True))])
    md = reproduce("toy_one", seeds=1).to_markdown()
    assert "±" not in md.split("|---|")[-1] and "1.000 (one seed: no spread)" in md
    from hf_ext.reproduce import methods as M

    one = {"steps_to_target_mean": 500.0, "steps_to_target_std": 0.0, "reached": 1, "seeds": 1}
    assert "±" not in M._ng_steps(one) and "one seed" in M._ng_steps(one)
    assert M._ng_steps({**one, "seeds": 3, "reached": 3, "steps_to_target_std": 20.0}) == "500 ± 20 (3/3 reached)"


def test_a_fast_report_says_smoke_check_and_states_the_budget_it_ran(monkeypatch):
    """Was: a --fast report stated the full budget ("200 steps" for grape_corpus, "1200 steps each" for neuralgrok)."""
    for name, spec in REPRODUCTIONS.items():
        assert spec.fast_budget, f"{name}: no fast budget registered"
        for full, cut in spec.fast_budget.items():
            assert full in spec.setting and full not in spec.setting_for(True) and cut in spec.setting_for(True), name
        assert spec.setting_for(False) == spec.setting
    assert "40 steps" in REPRODUCTIONS["grape_corpus"].setting_for(True)
    fast_ng = REPRODUCTIONS["neuralgrok"].setting_for(True)
    assert "40 steps each" in fast_ng and "1200 steps" not in fast_ng and "width 32, batch 64" in fast_ng

    spec = REPRODUCTIONS["grape_corpus"]
    seen = []

    def run(seed, fast, workdir):
        seen.append(fast)
        return {
            m: {"mean_target_loss": 3.0, "target_loss": {"a": 3.0}, "task_weights": {}} for m in ("grape", "uniform")
        }

    monkeypatch.setattr(spec, "run", run)
    fast = reproduce("grape_corpus", seeds=1, fast=True)
    assert seen == [True] and "40 steps" in fast.setting and "200 steps" not in fast.to_markdown()
    assert "smoke check" in fast.verdict_line() and "not evidence" in fast.verdict_line()
    full = reproduce("grape_corpus", seeds=1)
    assert "200 steps" in full.setting and "smoke check" not in full.to_markdown()
    # a method registered without a fast budget still does not claim the full budget
    toy = _toy(monkeypatch, "toy_nofast", [Claim("c", "-", lambda runs: ("-", True))], setting="A 100-step run.")
    assert "--fast: a smaller budget" in toy.setting_for(True)
    toy.fast_budget = {"500 steps": "5 steps"}  # a phrase the setting does not have: flagged, not silently kept
    assert "--fast: a smaller budget" in toy.setting_for(True)


# ------------------------------------------------------------------------------------------ F2: --output_dir ""
def test_an_empty_output_dir_is_a_usage_error_before_any_run(monkeypatch, capsys):
    """Was: `--output_dir ""` ran the whole reproduction into a temporary folder that was then deleted."""
    seen = []
    _toy(monkeypatch, "toy_empty_dir", [Claim("c", "-", lambda runs: ("-", True))], seen=seen)
    with pytest.raises(SystemExit) as exc:
        main(["reproduce", "toy_empty_dir", "--seeds", "1", "--output_dir", ""])
    assert exc.value.code == 2 and "--output_dir" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--output_dir"):
        reproduce("toy_empty_dir", seeds=1, output_dir="")
    assert seen == []
    assert reproduce("toy_empty_dir", seeds=1, output_dir=None).holds  # None still means a temporary folder


# ------------------------------------------------------------------------------------------ F3 and CLI flags
def test_dataset_config_name_without_dataset_name_is_refused(tmp_path):
    """Was: layer_parallel (and load_text_datasets) silently trained on the embedded corpus; pretrain refused it."""
    from hf_ext.data import load_text_datasets
    from hf_ext.recipes import layer_parallel

    with pytest.raises(ValueError, match="--dataset_config_name"):
        load_text_datasets(dataset_config_name="wikitext-2-raw-v1")
    argv = ["--num_hidden_layers", "4", "--hidden_size", "32", "--intermediate_size", "64", "--num_attention_heads",
            "2", "--num_key_value_heads", "1", "--block_size", "32", "--vocab_size", "512", "--pretrain_steps", "5",
            "--skip_sweep", "true", "--lp_start", "2", "--lp_end", "4", "--use_cpu", "true", "--report_to", "none",
            "--dataset_config_name", "wikitext-2-raw-v1", "--output_dir", str(tmp_path / "lp")]  # fmt: skip
    with pytest.raises(ValueError, match="--dataset_config_name.*--dataset_name"):
        layer_parallel.main(argv)
    assert not (tmp_path / "lp").exists() or not any((tmp_path / "lp").iterdir())


def test_an_unknown_recipe_flag_is_a_usage_error_naming_it(capsys):
    """Was: HfArgumentParser's ValueError as a traceback with exit 1."""
    with pytest.raises(SystemExit) as exc:
        main(["run", "pretrain", "--no_such_flag", "1"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--no_such_flag" in err and "hf-ext run pretrain" in err
    with pytest.raises(ValueError, match="--block_size"):  # other errors of a known recipe still propagate
        main(["run", "pretrain", "--block_size", "0"])


# ------------------------------------------------------------------------------------------ F4: special tokens
SPELLED = "The GPT-2 separator is <|eos|>, padding is <|pad|> and <|bos|> starts; done."


def _special_ids(tok):
    return {tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}


def test_text_that_spells_a_special_token_stays_text(tmp_path):
    """Was: a literal "<|eos|>" in a document became the EOS id (false document boundary when packing, deleted by
    decode). Documents are encoded with split_special_tokens=True where hf_ext tokenizes data; the tokenizer itself
    keeps transformers' default, so a prompt that spells a special token still encodes to it (metadata eval)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from hf_ext.data import build_tokenizer, pack_dataset

    tok = build_tokenizer(300, texts=["hello world, some text <|eos|> more"] * 20)
    tok.save_pretrained(str(tmp_path / "tok"))
    for t in (tok, AutoTokenizer.from_pretrained(str(tmp_path / "tok"))):
        assert not t.split_special_tokens  # prompts: a spelled special token is that token
        assert t("<|bos|>x", add_special_tokens=False)["input_ids"][0] == t.bos_token_id
        ids = t(SPELLED, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert not set(ids) & _special_ids(t)
        assert t.decode(ids, skip_special_tokens=True) == SPELLED
        blocks = pack_dataset(Dataset.from_dict({"text": [SPELLED, "second"]}), t, block_size=8, drop_remainder=False)
        flat = [i for b in blocks["input_ids"] for i in b]
        assert flat.count(t.eos_token_id) == 2 and not {t.bos_token_id, t.pad_token_id} & set(flat)
        assert t.decode(flat).count("<|eos|>") == 3  # the document's own spelling plus the two separators
    # the real special tokens are still single ids that collators insert explicitly
    assert len({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id}) == 3
    assert tok.convert_ids_to_tokens(tok.eos_token_id) == "<|eos|>"


def test_compliance_token_counts_treat_a_spelled_special_token_as_text():
    from datasets import Dataset

    from hf_ext.compliance import compute_retention_stats
    from hf_ext.data import build_tokenizer

    tok = build_tokenizer(300, texts=["hello world, some text more"] * 20)
    ds = Dataset.from_dict({"url": ["https://a.com/x"], "text": [SPELLED], "robots_compliant": [False]})
    stats = compute_retention_stats(ds, agents_column=None, tokenizer=tok)
    expected = len(tok(SPELLED, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    assert stats.overall["tokens"] == stats.overall["tokens_removed"] == expected
    assert expected > len(tok(SPELLED, add_special_tokens=False)["input_ids"])  # the spelling is several tokens


def test_cached_tokenizers_load_with_the_default_and_corpus_ids_do_not_change(tmp_path, monkeypatch, small_tokenizer):
    """A tokenizer cached by the version that saved split_special_tokens=True in its config loads with transformers'
    default (prompts that spell a special token encode to it); the embedded corpus spells no special token, so its
    packed blocks are the same with either setting."""
    from transformers import AutoTokenizer

    from hf_ext.data import build_tokenizer, corpus, load_corpus, pack_dataset
    from hf_ext.data import tokenizer as T

    assert not small_tokenizer.split_special_tokens  # the session's cached one
    test_split = load_corpus("test")
    assert not any(
        s in text for text in [*load_corpus("train")["text"], *test_split["text"]] for s in T.SPECIAL_TOKENS
    )
    a = pack_dataset(test_split, small_tokenizer, block_size=64)["input_ids"]
    plain = small_tokenizer(list(test_split["text"]), add_special_tokens=False)["input_ids"]
    stream = [i for ids in plain for i in [*ids, small_tokenizer.eos_token_id]]
    assert [list(x) for x in a] == [stream[i : i + 64] for i in range(0, len(stream) // 64 * 64, 64)]

    # a cache entry written by the earlier version: split_special_tokens=True saved in its config
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    monkeypatch.setattr(corpus, "load_corpus", lambda split: {"text": ["alpha beta gamma <|pad|> delta"] * 30})
    fresh = build_tokenizer(300)
    folder = next((tmp_path / "tokenizers").iterdir())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert not config.get("split_special_tokens", False)
    config["split_special_tokens"] = True
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(str(folder)).split_special_tokens  # what a plain load of it would give
    cached = build_tokenizer(300)
    assert not cached.split_special_tokens and cached.get_vocab() == fresh.get_vocab()
    assert cached("<|pad|>", add_special_tokens=False)["input_ids"] == [cached.pad_token_id]


# ------------------------------------------------------------------------------------------ F7: cache publish race
def test_tokenizer_cache_publish_race_uses_the_published_folder(tmp_path, monkeypatch):
    """Was: another process publishing between our rmtree(target) and os.replace(tmp, target) raised ENOTEMPTY."""
    import shutil

    from hf_ext.data import corpus
    from hf_ext.data import tokenizer as T

    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path / "cache"))
    texts = ["alpha beta gamma delta epsilon"] * 30
    monkeypatch.setattr(corpus, "load_corpus", lambda split: {"text": texts})
    finished = tmp_path / "other_process"
    T.build_tokenizer(300, texts=texts).save_pretrained(str(finished))  # the same training: what B publishes
    real_rmtree, state = shutil.rmtree, {"published": 0}

    def rmtree(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if os.path.basename(str(path)).startswith("bpe-300-") and not state["published"]:
            state["published"] += 1
            shutil.copytree(finished, path)  # the other process wins the race right here

    monkeypatch.setattr(T.shutil, "rmtree", rmtree)
    tok = T.build_tokenizer(300)
    assert state["published"] == 1 and not tok.split_special_tokens
    entries = sorted(p.name for p in (tmp_path / "cache" / "tokenizers").iterdir())
    assert len(entries) == 1 and entries[0].startswith("bpe-300-")  # ours was dropped, no .tmp- folder left
    published = tmp_path / "cache" / "tokenizers" / entries[0]
    assert tok.name_or_path == str(published) and tok.get_vocab() == T.build_tokenizer(300, texts=texts).get_vocab()

    # an error that is not a finished publication still surfaces
    real_replace = os.replace

    def failing_replace(src, dst):
        if os.path.basename(str(dst)).startswith("bpe-301-"):
            raise PermissionError(13, "denied", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(T.os, "replace", failing_replace)
    with pytest.raises(PermissionError):
        T.build_tokenizer(301)
    assert not [p for p in (tmp_path / "cache" / "tokenizers").iterdir() if p.name.startswith(".tmp-")]


# ------------------------------------------------------------------------------------------ F8: corpus cache
def test_a_corpus_cache_cut_at_a_line_boundary_is_rebuilt(tmp_path, monkeypatch, caplog):
    """Was: a cache cut at a line boundary was read as a smaller corpus (433/15 instead of 860/37), no warning."""
    from hf_ext.data import corpus, load_corpus

    records = corpus._load_records()
    builds = []
    monkeypatch.setattr(corpus, "build_corpus_records", lambda: builds.append(1) or [dict(r) for r in records])
    monkeypatch.setenv("HF_EXT_CACHE", str(tmp_path))
    n_train, n_test = len(load_corpus("train")), len(load_corpus("test"))
    assert builds == [1] and n_train + n_test == len(records)
    path = corpus._corpus_cache_file()
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[: len(lines) // 2]), encoding="utf-8")  # the audit's case first
    with caplog.at_level("WARNING"):
        assert (len(load_corpus("train")), len(load_corpus("test"))) == (n_train, n_test)
    assert str(path) in caplog.text and len(builds) == 2
    builds.clear()
    builds.append(1)
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) == len(records) + 1 and json.loads(lines[-1])["__hf_ext_corpus_cache__"]["records"] == len(
        records
    )
    assert [json.loads(line) for line in lines[:-1]] == records  # the records themselves are unchanged
    broken = {
        "cut at a line boundary": "".join(lines[: len(lines) // 2]),
        "records lost, trailer kept": "".join(lines[: len(lines) // 2] + lines[-1:]),
        "a record edited": lines[0].replace('"text": "', '"text": "X', 1) + "".join(lines[1:]),
        "old format (no trailer)": "".join(lines[:-1]),
    }
    for name, text in broken.items():
        path.write_text(text, encoding="utf-8")
        caplog.clear()
        with caplog.at_level("WARNING"):
            assert (len(load_corpus("train")), len(load_corpus("test"))) == (n_train, n_test), name
        assert str(path) in caplog.text, name
        assert corpus._load_records() == records, name
    assert len(builds) == 1 + len(broken)  # each rebuilt exactly once, then read from the new cache silently
    caplog.clear()
    with caplog.at_level("WARNING"):
        load_corpus("train")
    assert caplog.text == "" and len(builds) == 1 + len(broken)


# ------------------------------------------------------------------------------------------ F5: FSDP2 fingerprints
def test_rank_fingerprints_of_dtensor_parameters_in_one_process():
    """A DTensor parameter is fingerprinted as its full tensor (a 1-rank mesh here; 2 ranks in the test below)."""
    import tempfile

    import torch
    import torch.distributed as dist

    from hf_ext.utils.distributed import rank_fingerprints

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    plain = rank_fingerprints(model)
    init = tempfile.mkstemp()[1]
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=0, world_size=1)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.tensor import Shard, distribute_tensor

        mesh = init_device_mesh("cpu", (1,))
        for name, p in list(model.named_parameters()):
            setattr(model, name, torch.nn.Parameter(distribute_tensor(p.detach(), mesh, [Shard(0)])))
        assert rank_fingerprints(model) == plain
    finally:
        dist.destroy_process_group()
        os.remove(init)


# rank_fingerprints on 2 FSDP2 ranks (was: `total[0] += d.sum()` on an FSDP2 DTensor raised an AssertionError in
# DTensor dispatch): checked in the 2-rank launch of tests/test_two_rank_checks.py's
# test_fsdp2_sharded_state_dict_run_saves_and_reports_its_own_model (tests/scripts/fsdp_rank_fingerprints.py)


# ------------------------------------------------------------------------------------------ F6: import noise
@pytest.mark.parametrize("cuda, filtered", [(None, True), ("12.4", False)])
def test_failed_to_load_is_filtered_only_on_cpu_only_builds(monkeypatch, caplog, cuda, filtered):
    import torch

    from hf_ext.utils import quiet

    monkeypatch.setattr(torch.version, "cuda", cuda)
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(quiet, "_installed", False)
    for name in ("torchao", "torch.utils._pytree"):
        monkeypatch.setattr(logging.getLogger(name), "filters", [])
    quiet.silence_known_import_noise()
    logger = logging.getLogger("torchao")
    with caplog.at_level("WARNING", logger="torchao"):
        logger.warning("Failed to load /venv/torchao/_C_mxfp8.so: undefined symbol")
        logger.warning("another torchao warning")
        logging.getLogger("torch.utils._pytree").warning("Foo is an Enum subclass and is now natively supported by "
                                                         "torch.compile")  # fmt: skip
    assert ("Failed to load" in caplog.text) is not filtered
    assert "another torchao warning" in caplog.text and "Enum subclass" not in caplog.text


# ------------------------------------------------------------------------------------------ smaller
def test_block_size_true_and_empty_domains_are_refused(small_tokenizer):
    from datasets import Dataset

    from hf_ext.data import load_corpus, pack_dataset

    ds = Dataset.from_dict({"text": ["a b c d e f g h"]})
    for bad in (True, False, 0, 1.0):
        with pytest.raises(ValueError, match="block_size"):
            pack_dataset(ds, small_tokenizer, block_size=bad)
    assert len(pack_dataset(ds, small_tokenizer, block_size=1)) > 0
    with pytest.raises(ValueError, match="domains is empty"):
        load_corpus("train", domains=[])
    assert len(load_corpus("test", domains=["language"])) > 0


def test_import_hf_ext_registers_what_its_docstring_says(repo_root):
    import hf_ext

    assert "grok_decoder" in hf_ext.__doc__ and "import hf_ext.neuralgrok" in hf_ext.__doc__
    code = (
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING as M\n"
        "import hf_ext\n"
        "print('fog' in M, 'layer_parallel' in M, 'grok_decoder' in M)\n"
        "import hf_ext.neuralgrok\n"
        "print('grok_decoder' in M)\n"
    )
    env = {**os.environ, "PYTHONPATH": repo_root}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=repo_root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "True", "False", "True"]


def test_atomic_open_replaces_a_symlink_with_a_file(tmp_path):
    from hf_ext.utils.io import atomic_open

    assert "symbolic link" in atomic_open.__doc__
    target = tmp_path / "target.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with atomic_open(str(link)) as fh:
        fh.write("new")
    assert not link.is_symlink() and link.read_text() == "new" and target.read_text() == "old"
