"""Facts that README.md, docs/fp8.md, docs/optim.md, docs/neuralgrok.md, docs/federated.md, docs/layer_parallel.md and
model_cards/fog.md state about the code, recomputed from it (audit pass dt52).

* the per-seed commands the docs give for the registered reproductions (`hf-ext reproduce warmup`, `neuralgrok`,
  `federated`) are the commands those reproductions run: every flag the docs show has the reproduction's value, and
  every other flag the reproduction passes is the recipe's default or changes only output (progress bars, logging
  integrations, folders);
* the layer-pairing quality reproduction's setting (docs/layer_parallel.md) is what `train_and_sweep` builds;
* `scripts/bench_layer_parallel.py`'s GPU and `--tiny` defaults and its default range are the ones
  docs/layer_parallel.md lists;
* docs/fp8.md's count of converted linears per layer, and the model card's / README's "eight sites per layer";
* docs/federated.md's quick start: its canaries fit one training block and are longer than the longest prefix plus
  the 50-token window, as the paragraph under it asks; the Flower App's `round-timeout` and
  `accept-partial-rounds` are the documented 600 s and false.

A default changed in the code, or a number mistyped in the docs, fails here naming the doc.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shlex
import sys

import pytest

from .test_docs_dt51 import _doc, _flat


def _flags(argv: list[str]) -> dict[str, str]:
    """`--flag value` pairs of an argument list (every flag of these commands takes a value)."""
    out = {}
    for i, token in enumerate(argv):
        if token.startswith("--"):
            assert i + 1 < len(argv) and not argv[i + 1].startswith("--"), f"{token} without a value in {argv}"
            out[token] = argv[i + 1]
    return out


def _recipe_defaults(*classes) -> dict[str, str]:
    """`--flag` -> str(default) over the recipe's argument dataclasses."""
    out = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                out[f"--{f.name}"] = f.default
    return out


def _module_defaults(module) -> dict:
    """`--flag` -> default over the argument dataclasses a recipe module defines."""
    defaults = {}
    for obj in vars(module).values():
        if dataclasses.is_dataclass(obj) and isinstance(obj, type) and obj.__module__ == module.__name__:
            defaults.update(_recipe_defaults(obj))
    return defaults


def _same_value(documented: str, actual) -> bool:
    try:
        return float(documented) == float(actual)
    except (TypeError, ValueError):
        return str(documented).lower() == str(actual).lower()


class _Captured(Exception):
    pass


def _capture_recipe_calls(monkeypatch, result=None) -> list[tuple[str, list[str]]]:
    """Replace the reproductions' recipe runner: record (recipe, argv); return `result`, or stop at the first call."""
    import hf_ext.reproduce.methods as methods

    calls = []

    def fake(name, argv):
        calls.append((name, list(argv)))
        if result is None:
            raise _Captured
        return result(name, argv)

    monkeypatch.setattr(methods, "_quiet_recipe", fake)
    return calls


# flags that change where or how a run reports, not what it trains or measures
_OUTPUT_ONLY = {"--output_dir", "--disable_tqdm", "--report_to", "--logging_steps", "--use_cpu"}


def test_optim_md_warmup_reproduction_command_is_the_reproductions(repo_root, monkeypatch, tmp_path):
    from hf_ext.recipes import warmup
    from hf_ext.reproduce.methods import _warmup_run

    text = _doc(repo_root, "docs/optim.md")
    start = text.index("**The setting of `hf-ext reproduce warmup` and of the slow test**")
    block = re.search(r"```bash\n(.*?)```", text[start:], re.S).group(1)
    documented = _flags(shlex.split(block.replace("\\\n", " ").split("python scripts/warmup.py", 1)[1]))
    assert documented.pop("--seed") == "S" and documented.pop("--output_dir") == "outputs/warmup/seedS"
    calls = _capture_recipe_calls(monkeypatch)
    with pytest.raises(_Captured):
        _warmup_run(seed=3, fast=False, workdir=str(tmp_path))
    ((name, argv),) = calls
    assert name == "warmup"
    run = _flags(argv)
    assert run.pop("--seed") == "3"
    for flag, value in documented.items():
        assert flag in run and _same_value(value, run[flag]), (
            f"docs/optim.md's warmup reproduction command has {flag} {value}, `hf-ext reproduce warmup` "
            f"{run.get(flag)}"
        )
    defaults = _module_defaults(warmup)
    for flag, value in run.items():
        if flag in documented or flag in _OUTPUT_ONLY:
            continue
        assert flag in defaults and _same_value(value, defaults[flag]), (
            f"`hf-ext reproduce warmup` passes {flag} {value}, which docs/optim.md's command leaves at the recipe "
            f"default {defaults.get(flag)!r}"
        )
    # the prose around it and the README
    prose = _flat(text[start : start + 600])
    assert (
        "a 4-layer Llama, hidden 128 (2 heads), vocabulary 512, batch 32 x 128 tokens, AdamW lr 3e-3, 300 steps"
        in (prose)
    )
    assert "In `hf-ext reproduce warmup` (a 4-layer, hidden-128 Llama, 3 seeds;" in _flat(_doc(repo_root, "README.md"))


def test_neuralgrok_md_per_seed_command_is_the_reproductions(repo_root, monkeypatch, tmp_path):
    from hf_ext.recipes import neuralgrok
    from hf_ext.reproduce.methods import _neuralgrok_run

    text = _doc(repo_root, "docs/neuralgrok.md")
    line = re.search(r"# per method and seed: python scripts/neuralgrok\.py (.*)\n#\s+\(the sixth run: (.*)\)", text)
    documented = _flags(shlex.split(line.group(1)))
    sixth = _flags(shlex.split(line.group(2)))
    assert documented.pop("--methods") == "M" and documented.pop("--seeds") == "S"
    calls = _capture_recipe_calls(monkeypatch, result=lambda name, argv: {"methods": {_flags(argv)["--methods"]: {}}})
    _neuralgrok_run(seed=2, fast=False, workdir=str(tmp_path))
    defaults = _module_defaults(neuralgrok)
    methods = set()
    for name, argv in calls:
        assert name == "neuralgrok"
        run = _flags(argv)
        assert run.pop("--seeds") == "2"
        method = run.pop("--methods")
        methods.add(method)
        variant = {k: run.pop(k) for k in list(run) if k in sixth and k != "--methods"}
        if variant:
            assert method == sixth["--methods"] and variant == {k: v for k, v in sixth.items() if k != "--methods"}
        for flag, value in documented.items():
            assert flag in run and _same_value(value, run[flag]), (
                f"docs/neuralgrok.md's per-seed command has {flag} {value}, the reproduction {run.get(flag)}"
            )
        for flag, value in run.items():
            if flag in documented or flag in _OUTPUT_ONLY:
                continue
            assert flag in defaults and _same_value(value, defaults[flag]), (
                f"`hf-ext reproduce neuralgrok` passes {flag} {value}, which docs/neuralgrok.md's command leaves at "
                f"the recipe default {defaults.get(flag)!r}"
            )
    assert len(calls) == 6  # "six runs per seed"
    assert "### At the recipe's defaults: six runs per seed, three seeds" in text
    assert sixth["--methods"] in methods


def test_federated_md_per_seed_commands_are_the_reproductions(repo_root, monkeypatch, tmp_path):
    from hf_ext.reproduce.methods import _federated_run

    text = _doc(repo_root, "docs/federated.md")
    federated = re.search(r"# per seed: python scripts/federated\.py (.*?)\s+\(all other options default\)", text)
    centralized = re.search(
        r"# part of `hf-ext reproduce federated` \(above\); per seed:\npython scripts/federated\.py (.*)", text
    )
    calls = _capture_recipe_calls(monkeypatch, result=lambda name, argv: {"runs": {}})
    _federated_run(seed=1, fast=False, workdir=str(tmp_path))
    assert [name for name, _ in calls] == ["federated", "federated"]
    for (_, argv), match in zip(calls, (federated, centralized)):
        documented = _flags(shlex.split(match.group(1).replace("$seed", "1")))
        run = {k: v for k, v in _flags(argv).items() if k not in _OUTPUT_ONLY}
        assert run == documented, f"docs/federated.md's per-seed command {documented}, the reproduction {run}"


def test_layer_parallel_md_quality_setting_is_train_and_sweeps(repo_root, monkeypatch):
    import inspect

    import hf_ext.models.layer_parallel.sweep as sweep
    from hf_ext.reproduce import methods

    text = _flat(_doc(repo_root, "docs/layer_parallel.md"))
    assert (
        "a 6-layer Llama (hidden 48, MLP 128, GQA 4/2 heads, tied embeddings), byte-level BPE with 512 tokens, trained "
        "for 1200 AdamW steps (lr 3e-3, 50 warm-up steps then cosine, weight decay 0.1, batch 32 blocks of 32 tokens)"
    ) in text
    assert "perplexity on 64 held-out blocks" in text
    params = inspect.signature(methods.train_and_sweep).parameters
    assert {k: params[k].default for k in ("steps", "block", "batch", "eval_blocks")} == dict(
        steps=1200, block=32, batch=32, eval_blocks=64
    )
    seen = {}

    def fake_sweep(model, eval_dataset, **kwargs):
        seen.update(config=model.config, blocks=len(eval_dataset), length=len(eval_dataset[0]["input_ids"]))
        return []

    monkeypatch.setattr(sweep, "perplexity_sweep", fake_sweep)
    methods.train_and_sweep(0, steps=1)
    c = seen["config"]
    assert (c.num_hidden_layers, c.hidden_size, c.intermediate_size) == (6, 48, 128)
    assert (c.num_attention_heads, c.num_key_value_heads, c.tie_word_embeddings) == (4, 2, True)
    assert (seen["blocks"], seen["length"]) == (64, 32)
    assert c.vocab_size <= 512 + 8  # the 512-token BPE (plus its special tokens, if counted apart)


def _bench_module(repo_root: str):
    spec = importlib.util.spec_from_file_location(
        "bench_layer_parallel_dt52", os.path.join(repo_root, "scripts", "bench_layer_parallel.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while they are built
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    return module


def test_layer_parallel_md_bench_defaults(repo_root):
    sizes = _bench_module(repo_root).SIZE_DEFAULTS
    gpu = {k: v[0] for k, v in sizes.items()}
    tiny = {k: v[1] for k, v in sizes.items()}
    text = _flat(_doc(repo_root, "docs/layer_parallel.md"))
    m = re.search(
        r"Default on a GPU: the Llama-3\.2-3B shape \((\d+) layers, hidden (\d+), (\d+)/(\d+) heads, MLP (\d+), vocab "
        r"(\d+), random weights, bf16\) with (\d+) pairs at \[(\d+), (\d+)\)",
        text,
    )
    assert m, "docs/layer_parallel.md no longer states the benchmark's GPU default shape"
    layers, hidden, heads, kv, mlp, vocab, pairs, start, end = map(int, m.groups())
    assert (layers, hidden, heads, kv, mlp, vocab, pairs) == (
        gpu["num_hidden_layers"], gpu["hidden_size"], gpu["num_attention_heads"], gpu["num_key_value_heads"],
        gpu["intermediate_size"], gpu["vocab_size"], gpu["num_pairs"],
    )  # fmt: skip
    # "Without --lp_start the range ends before the last layer (it starts at layers - 1 - 2 x pairs)"
    assert "(it starts at layers − 1 − 2 × pairs)" in text
    assert (start, end) == (layers - 1 - 2 * pairs, layers - 1)
    m = re.search(
        r"`--tiny` only changes the defaults \((\d+) layers, hidden (\d+), MLP (\d+), (\d+)/(\d+) heads, vocab (\d+), "
        r"(\d+) pairs, (\d+) new tokens, (\d+) repeats, CPU",
        text,
    )
    assert m, "docs/layer_parallel.md no longer lists the --tiny defaults"
    assert tuple(map(int, m.groups())) == (
        tiny["num_hidden_layers"], tiny["hidden_size"], tiny["intermediate_size"], tiny["num_attention_heads"],
        tiny["num_key_value_heads"], tiny["vocab_size"], tiny["num_pairs"], tiny["new_tokens"], tiny["repeats"],
    )  # fmt: skip
    # docs/benchmarks.md: "at its GPU default: the Llama-3.2-3B shape, 28 layers, ..., 7 pairs = layers 13-26, ...,
    # 128 new tokens, best and median of 3 alternated runs"
    bench = _flat(_doc(repo_root, "docs/benchmarks.md"))
    assert (
        f"{gpu['num_hidden_layers']} layers, random weights, BF16, SDPA, {gpu['num_pairs']} pairs = layers "
        f"{start}-{end - 1}, prompt 32, {gpu['new_tokens']} new tokens, best and median of {gpu['repeats']} "
        "alternated runs"
    ) in bench


def test_fp8_md_converted_linears_per_layer(repo_root):
    from transformers import AutoModelForCausalLM

    from hf_ext.fp8 import convert, fp8_converted_modules
    from hf_ext.models.fog import FogConfig

    text = _doc(repo_root, "docs/fp8.md")
    m = re.search(
        r"# per layer (\d) attention \+ (\d) \(FOG\) or (\d) \(Llama\) MLP linears: (\d) or (\d) x layers", text
    )
    attention, fog_mlp, llama_mlp, fog_total, llama_total = map(int, m.groups())
    assert (attention + fog_mlp, attention + llama_mlp) == (fog_total, llama_total)
    size = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, swiglu_intermediate_size=32)
    for config, per_layer in ((FogConfig.fog(**size), fog_total), (FogConfig.llama_baseline(**size), llama_total)):
        model = AutoModelForCausalLM.from_config(config)
        convert(model)  # the documented call: torchao, tensorwise
        converted = fp8_converted_modules(model)
        assert len(converted) == per_layer * size["num_hidden_layers"], (config.hidden_act, converted)
        assert not any("lm_head" in name or "embed" in name for name in converted)  # "LM head ... stay high precision"


def test_eight_monitored_sites_per_layer(repo_root):
    import inspect

    from hf_ext.fp8 import SITES, Fp8HealthCallback

    assert len(SITES) == 8
    card = _flat(_doc(repo_root, "model_cards/fog.md"))
    assert "at eight sites per layer: seven inside it" in card
    assert "tracks activation kurtosis at eight sites per layer" in _flat(_doc(repo_root, "README.md"))
    # the default monitors all of them ("Sites to monitor (default all seven + `activation`)")
    assert inspect.signature(Fp8HealthCallback.__init__).parameters["sites"].default is None
    callback = Fp8HealthCallback()
    assert callback.sites is None or sorted(callback.sites) == sorted(SITES)


def test_federated_md_quick_start_canaries_fit_one_block(repo_root, small_tokenizer):
    import inspect

    from hf_ext.federated import make_canaries, measure_memorization

    text = _doc(repo_root, "docs/federated.md")
    quick = text[text.index("## Quick start") :]
    quick = quick[: quick.index("## Flower deployment")]
    m = re.search(
        r"canaries = make_canaries\((\d+), \{10: 0\.5, 1: 0\.5\}, num_words=(\d+)\)\s+# .*?~(\d+)-(\d+) tokens", quick
    )
    count, words, low, high = map(int, m.groups())
    assert "tok = build_tokenizer(512)" in quick  # the fixture's tokenizer
    block = int(re.search(r"build_client_dataset\(.*?, tok, (\d+)\)", quick).group(1))
    prefixes = eval(re.search(r"measure_memorization\(s\.model, tok, canaries, (\([\d, ]+\))\)", quick).group(1))
    window = inspect.signature(measure_memorization).parameters["window"].default
    assert f"the {window}-token window" in _flat(quick) and f"(here {block}\ntokens)" in quick
    lengths = [
        len(small_tokenizer(c.text)["input_ids"]) for c in make_canaries(count, {10: 0.5, 1: 0.5}, num_words=words)
    ]
    # "keep canaries within the block size (here 128 tokens) and longer than the largest prefix plus the 50-token
    # window"
    assert max(prefixes) + window < min(lengths) and max(lengths) <= block, lengths
    assert low - 5 <= min(lengths) and max(lengths) <= high + 5, (lengths, low, high)


def test_federated_md_flower_app_timeout_and_partial_rounds(repo_root):
    import tomllib

    with open(os.path.join(repo_root, "examples", "flower_app", "pyproject.toml"), "rb") as handle:
        config = tomllib.load(handle)["tool"]["flwr"]["app"]["config"]
    text = _flat(_doc(repo_root, "docs/federated.md"))
    m = re.search(r"`timeout` \(run config `round-timeout`, default (\d+) s in the Flower App;", text)
    assert float(m.group(1)) == config["round-timeout"]
    assert "a silent node fails the round after 600 s" in text and "timeout=600.0, min_round_clients=3" in text
    assert config["round-timeout"] == 600.0
    # "the run-config opt-in `accept-partial-rounds=true`": off in the App
    assert "the run-config opt-in `accept-partial-rounds=true`" in text and config["accept-partial-rounds"] is False
