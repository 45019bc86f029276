"""The reproductions, one per method: what each seed runs (the package's recipes) and how each claim is judged.

Budgets are CPU-sized (minutes per seed on 2 cores); `fast` cuts them further to check that a reproduction runs (a
smoke check, not evidence). Each `Reproduction.fast_budget` maps the budget phrases of its `setting` to what `fast`
runs instead, so that a fast report's setting line states the budget actually run.
"""

from __future__ import annotations

import contextlib
import io
import math
import statistics

from . import Claim, Reproduction, mean_spread


def _quiet_recipe(name: str, argv: list[str]) -> dict:
    """Run recipe `name` with `argv`, its printing captured (the reproduction prints its own table)."""
    import importlib

    main = importlib.import_module(f"hf_ext.recipes.{name}").main
    with contextlib.redirect_stdout(io.StringIO()):
        return main(argv)


def _mean(values) -> float:
    return statistics.fmean(float(v) for v in values)


def _worst(values) -> float:
    """The largest value, NaN if any is NaN (`max` skips a NaN that is not first)."""
    values = [float(v) for v in values]
    return math.nan if any(math.isnan(v) for v in values) else max(values)


# --------------------------------------------------------------------------------------------------- metadata
def _metadata_run(seed: int, fast: bool, workdir: str) -> dict:
    steps = 60 if fast else 300
    argv = [
        "--dataset", "synthetic", "--max_steps", str(steps), "--doc_eval_steps", str(steps // 15),
        "--hidden_size", "64", "--intermediate_size", "128", "--num_hidden_layers", "2", "--block_size", "128",
        "--per_device_train_batch_size", "16", "--max_eval_docs", "100", "--cooldown_fraction", "0",
        "--guidance_scale", "3", "--guidance_samples", "8" if fast else "16", "--guidance_prompt", "",
        "--logging_steps", "50", "--disable_tqdm", "true", "--seed", str(seed), "--output_dir", workdir,
    ]  # fmt: skip
    res = _quiet_recipe("metadata_pretrain", argv)
    share = res.get("domain_token_share", {})
    to_match = res["steps_to_baseline_final_loss"]
    return {
        "max_steps": steps,
        # the URL model scored with its URL: test-time information the baseline never gets
        "steps_to_match": to_match["url_conditioned"],
        # scored in the empty context, as a benchmark without URLs sees it: what the speed-up claim is judged on
        "steps_to_match_without_context": to_match["url_conditioned_without_context"],
        "final": res["final"],
        "share_scale_1": share.get("scale_1"),
        "share_guided": share.get("scale_3"),
    }


def _fractions(runs: list[dict], key: str) -> list[float]:
    """Steps to the baseline's final loss as a fraction of its steps; a seed that never reached it counts as 2."""
    return [(r[key] or r["max_steps"] * 2) / r["max_steps"] for r in runs]


def _steps_fraction(runs: list[dict]) -> tuple[str, bool]:
    """The speed-up, judged on the URL model scored WITHOUT its URL (the empty context): the paper's speed-up is in
    downstream benchmarks, whose prompts carry no URL, and in the synthetic corpus the host decides most words, so the
    with-URL number also counts test-time information. Both are reported; only the empty-context one is judged."""
    with_url = f"with its URL at evaluation: {mean_spread(_fractions(runs, 'steps_to_match'), '{:.2f}')}"
    if any("steps_to_match_without_context" not in r for r in runs):  # results recorded before it was measured
        return f"without the URL: not measured (rerun the reproduction); {with_url}", False
    fractions = _fractions(runs, "steps_to_match_without_context")
    text = f"{mean_spread(fractions, '{:.2f}')} of the baseline's steps without the URL at evaluation ({with_url})"
    return text, _mean(fractions) <= 0.8


def _context_helps(runs: list[dict]) -> tuple[str, bool]:
    gaps = [r["final"]["baseline"] - r["final"]["url_model_with_context"] for r in runs]
    return f"baseline - URL model loss {mean_spread(gaps)}", _mean(gaps) > 0


def _guidance_steers(runs: list[dict]) -> tuple[str, bool]:
    if any(r["share_guided"] is None for r in runs):  # judged on every seed or not at all
        measured = sum(r["share_guided"] is not None for r in runs)
        return "not measured" if not measured else f"measured on {measured}/{len(runs)} seeds only", False
    gains = [r["share_guided"] - r["share_scale_1"] for r in runs]
    return f"host-word share gain at scale 3: {mean_spread(gains)}", _mean(gains) > 0


METADATA = Reproduction(
    method="metadata",
    title="URL conditioning speeds up pretraining; guidance steers generation",
    setting="Synthetic corpus where each URL host decides most of a document's words; 2-layer model, hidden 64, "
    "300 steps, 16 guidance samples.",
    fast_budget={"300 steps": "60 steps", "16 guidance samples": "8 guidance samples"},
    run=_metadata_run,
    claims=[
        Claim(
            "URL-conditioned model, evaluated without its URL, reaches the baseline's final loss in fewer steps",
            "the baseline's downstream performance (benchmarks without URLs) with 60B instead of 100B tokens (0.6x) "
            "[3rd-party summary]",
            _steps_fraction,
        ),
        Claim("with URL context, held-out loss is below the baseline's", "qualitative (abstract)", _context_helps),
        Claim(
            "classifier-free guidance towards a host raises that host's word share",
            "context steers generation (abstract)",
            _guidance_steers,
        ),
    ],  # fmt: skip
)


# --------------------------------------------------------------------------------------------------- grape
def _grape_run(seed: int, fast: bool, workdir: str) -> dict:
    steps = 40 if fast else 200
    common = [
        "--hidden_size", "64", "--intermediate_size", "192", "--num_attention_heads", "4", "--vocab_size", "1024",
        "--block_size", "64", "--per_device_train_batch_size", "16", "--max_steps", str(steps),
        "--learning_rate", "3e-3", "--lr_scheduler_type", "constant",
        "--disable_tqdm", "true", "--use_cpu", "true", "--seed", str(seed), "--save_strategy", "no",
    ]  # fmt: skip
    # the reweighting cadence and batch: read by grape only (the recipe refuses them for uniform, which ignores them)
    reweighting = [
        "--reweight_domains_every", "10", "--reweight_tasks_every", "10", "--reweight_batch_size", "16",
        "--reweight_mini_batch_size", "8",
    ]  # fmt: skip
    out = {}
    for method in ("grape", "uniform"):
        argv = [*common, *(reweighting if method == "grape" else []), "--reweight_method", method]
        res = _quiet_recipe("grape", [*argv, "--output_dir", f"{workdir}/{method}"])
        out[method] = {
            "mean_target_loss": res["mean_target_eval_loss"],
            "target_loss": res["target_eval_loss"],
            "task_weights": res.get("task_weights", {}),
        }
    return out


def _grape_beats_uniform(runs: list[dict]) -> tuple[str, bool]:
    gaps = [r["uniform"]["mean_target_loss"] - r["grape"]["mean_target_loss"] for r in runs]
    return f"uniform - GRAPE mean target loss {mean_spread(gaps)}", _mean(gaps) > 0


def _grape_worst_target(runs: list[dict]) -> tuple[str, bool]:
    gaps = [_worst(r["uniform"]["target_loss"].values()) - _worst(r["grape"]["target_loss"].values()) for r in runs]
    return f"uniform - GRAPE worst-target loss {mean_spread(gaps)}", _mean(gaps) > 0


GRAPE_CORPUS = Reproduction(
    method="grape_corpus",
    title="GRAPE vs uniform mixing on the embedded corpus (documentation domains, two target tasks)",
    setting="Embedded corpus (9 documentation domains), the recipe's two default target tasks, 2-layer model, "
    "200 steps.",
    fast_budget={"200 steps": "40 steps"},
    run=_grape_run,
    claims=[
        Claim("lower mean target loss than uniform mixing at equal steps",
              "outperforms baselines on 6 reasoning tasks (abstract; no numbers found)", _grape_beats_uniform,
              asserted=False),
        Claim("lower loss on the worst target (group robustness)", "group-robust objective (title)",
              _grape_worst_target, asserted=False),
    ],  # fmt: skip
)


_CHAINS = {"a": (11, 2), "b": (12, 6), "c": (13, 2), "d": (14, 3)}  # domain -> (chain seed, successors per token)


def _grape_synthetic_run(seed: int, fast: bool, workdir: str) -> dict:
    import os

    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..grape import GrapeConfig, GrapeTrainer
    from ..grape.synthetic import markov_sequences

    length, steps = 32, 60 if fast else 300
    rows, domains = [], []
    for d, (chain, branching) in _CHAINS.items():
        seqs = markov_sequences(chain, 400, length, branching=branching, sample_seed=100 * seed)
        rows += seqs
        domains += [d] * len(seqs)
    train = Dataset.from_dict({"input_ids": rows, "domain": domains})

    def task(domain, offset, n):
        chain, branching = _CHAINS[domain]
        return Dataset.from_dict(
            {"input_ids": markov_sequences(chain, n, length, branching=branching, sample_seed=100 * seed + offset)}
        )

    targets = {"t_easy": task("a", 1, 64), "t_hard": task("b", 1, 64)}
    held_out = {"t_easy": task("a", 2, 128), "t_hard": task("b", 2, 128)}
    out = {}
    for method in ("grape", "uniform"):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, pad_token_id=0,
            bos_token_id=1, eos_token_id=2,
        ))  # fmt: skip
        args = GrapeConfig(
            output_dir=os.path.join(workdir, method), reweight_method=method, max_steps=steps,
            per_device_train_batch_size=16, learning_rate=3e-3, lr_scheduler_type="constant",
            reweight_domains_every=10, reweight_tasks_every=10, reweight_batch_size=16, reweight_mini_batch_size=8,
            domain_step_size=1.5, task_step_size=5.0, report_to="none", use_cpu=True, disable_tqdm=True,
            save_strategy="no", logging_steps=1000, seed=seed,
        )  # fmt: skip
        trainer = GrapeTrainer(model=model, args=args, train_dataset=train, target_datasets=targets)
        trainer.train()
        trainer.model.eval()
        losses = {}
        with torch.no_grad():
            for name, ds in held_out.items():
                ids = torch.tensor(ds["input_ids"])
                losses[name] = float(trainer.model(input_ids=ids, labels=ids).loss)
        st = trainer.mixture_state
        out[method] = {
            "mean_target_loss": _mean(losses.values()),
            "target_loss": losses,
            "average_domain_weights": dict(zip(st.domain_names, st.average_domain_weights().tolist())),
            "average_task_weights": dict(zip(st.task_names, st.average_task_weights().tolist())),
        }
    return out


def _grape_task_weight_to_hard(runs: list[dict]) -> tuple[str, bool]:
    z = [r["grape"]["average_task_weights"]["t_hard"] for r in runs]
    return f"time-averaged task weight of the hard target: {mean_spread(z)}", _mean(z) > 0.5


def _grape_domain_weight_to_source(runs: list[dict]) -> tuple[str, bool]:
    w = [r["grape"]["average_domain_weights"]["b"] for r in runs]

    def b_largest(weights: dict) -> bool:  # strictly above every other domain (a NaN weight is never below b's)
        return all(weights["b"] > v for k, v in weights.items() if k != "b")

    top = sum(b_largest(r["grape"]["average_domain_weights"]) for r in runs)
    return f"time-averaged weight of its source: {mean_spread(w)} (largest on {top}/{len(runs)} seeds)", (
        _mean(w) > 0.25 and top == len(runs)
    )


GRAPE = Reproduction(
    method="grape",
    title="GRAPE moves weight to the slow-improving target and its source",
    setting="Four synthetic source domains (random Markov chains; b is the high-entropy one), target t_easy served "
    "by a and t_hard by b; 2-layer Llama, hidden 64, 300 steps, reweighting every 10 steps.",
    fast_budget={"300 steps": "60 steps"},
    run=_grape_synthetic_run,
    claims=[
        Claim("task weight moves to the harder (slower-improving) target",
              "rate-of-improvement task weights (method)", _grape_task_weight_to_hard),
        Claim("domain weight moves to that target's source", "mirror-descent domain weights (method)",
              _grape_domain_weight_to_source),
        # Over seeds 0-19 GRAPE is worse than uniform on the mean target loss on 14 of 20 (-0.21 +- 0.34; 2026-12-04,
        # with g_alpha / g_tgt over per-device train batches as the GRAPE code; before: 12 of 20, and it held on
        # seeds 0-2), since it starves t_easy's source (t_easy up to 3.6 nats vs uniform's 1.1-1.2); the worst target
        # is lower on 16 of 20 (+0.34 +- 0.41). Reported, not asserted (docs/reproductions.md).
        Claim("lower mean target loss than uniform mixing at equal steps",
              "outperforms baselines on 6 reasoning tasks (abstract; no numbers found)", _grape_beats_uniform,
              asserted=False),
        Claim("lower loss on the worst target (group robustness)", "group-robust objective (title)",
              _grape_worst_target, asserted=False),
    ],  # fmt: skip
)


# --------------------------------------------------------------------------------------------------- fog
def _fog_run(seed: int, fast: bool, workdir: str) -> dict:
    import json
    import os

    steps = 30 if fast else 100
    common = [
        "--hidden_size", "64", "--intermediate_size", "192", "--num_hidden_layers", "4", "--num_attention_heads", "4",
        "--block_size", "64", "--per_device_train_batch_size", "8", "--vocab_size", "512", "--max_steps", str(steps),
        "--learning_rate", "1e-2", "--lr_scheduler_type", "constant", "--warmup_steps", "0",
        "--attn_implementation", "eager", "--fp8_scaling", "delayed", "--fp8_monitor_steps", "10",
        "--max_eval_blocks", "16", "--max_new_tokens", "2", "--logging_steps", "10", "--disable_tqdm", "true",
        "--seed", str(seed),
    ]  # fmt: skip
    out = {}
    for name, extra in (
        ("llama_fp8", ["--model_type", "llama", "--fp8_backend", "emulated", "--fp8_attention", "true"]),
        ("fog_fp8", ["--model_type", "fog", "--fp8_backend", "emulated", "--fp8_attention", "true"]),
        ("fog_fp32", ["--model_type", "fog", "--fp8_backend", "none"]),
        # the control of FP8's own role: the baseline in high precision (added 2026-12-06)
        ("llama_fp32", ["--model_type", "llama", "--fp8_backend", "none"]),
    ):
        folder = os.path.join(workdir, name)
        res = _quiet_recipe("pretrain", [*common, *extra, "--output_dir", folder])
        with open(os.path.join(folder, "fp8_health.json"), encoding="utf-8") as fh:
            history = json.load(fh)["history"]
        out[name] = {
            "kurtosis": [h["qkv_input/kurtosis/avg"] for h in history if "qkv_input/kurtosis/avg" in h],
            "final_loss": _mean(loss for _, loss in res["loss_curve"][-3:]),
        }
    return out


def _standard_error(values: list[float]) -> float:
    """The standard error of the mean over seeds (0 for one seed, which has no measured spread; NaN when a seed's value
    is NaN or inf, a diverged run: `statistics.stdev` raises an AttributeError there, which ended the reproduction
    with no report, and the claims that use it then do not hold)."""
    values = [float(v) for v in values]
    if len(values) < 2:
        return 0.0
    if not all(math.isfinite(v) for v in values):
        return math.nan
    return statistics.stdev(values) / math.sqrt(len(values))


def _fog_kurtosis(runs: list[dict]) -> tuple[str, bool]:
    # the second half of the run (steps 60-100 of 100), where outliers grow: early on FOG's kurtosis is the higher one
    # (its architecture starts there), which the whole-run mean mixed in. Asserted: the mean gap over seeds exceeds
    # its standard error. 8 seeds on 2026-12-06: late gap 1.56 +- 1.01, positive on 8/8, every 3-seed subset passes;
    # the whole-run mean asserted before was positive on 7/8 (seed 4: -0.14).
    late = [_late_mean(r["llama_fp8"]["kurtosis"]) - _late_mean(r["fog_fp8"]["kurtosis"]) for r in runs]
    whole = [_mean(r["llama_fp8"]["kurtosis"]) - _mean(r["fog_fp8"]["kurtosis"]) for r in runs]
    text = (
        f"Llama - FOG qkv-input kurtosis in FP8, second half of the run: {mean_spread(late, '{:.2f}')} "
        f"(positive on {sum(g > 0 for g in late)}/{len(late)} seeds; whole run: {mean_spread(whole, '{:.2f}')})"
    )
    return text, _mean(late) - _standard_error(late) > 0


def _late_mean(kurtosis: list[float]) -> float:
    return _mean(kurtosis[len(kurtosis) // 2 :])


def _fp8_raises_llama_kurtosis(runs: list[dict]) -> tuple[str, bool]:
    if any("llama_fp32" not in r for r in runs):  # runs saved before the arm existed (rejudge)
        return "no Llama FP32 arm in these runs (saved before 2026-12-06)", False
    gaps = [_late_mean(r["llama_fp8"]["kurtosis"]) - _late_mean(r["llama_fp32"]["kurtosis"]) for r in runs]
    text = (
        f"Llama FP8 - Llama FP32 qkv-input kurtosis, second half of the run: {mean_spread(gaps, '{:.2f}')} "
        f"(positive on {sum(g > 0 for g in gaps)}/{len(gaps)} seeds)"
    )
    return text, _mean(gaps) - _standard_error(gaps) > 0


def _fog_tracks_high_precision(runs: list[dict]) -> tuple[str, bool]:
    gaps = [abs(r["fog_fp8"]["final_loss"] / r["fog_fp32"]["final_loss"] - 1) for r in runs]
    return f"abs(FP8 / FP32 final loss - 1) = {mean_spread(gaps, '{:.3f}')}", _mean(gaps) < 0.03


FOG = Reproduction(
    method="fog",
    title="FOG keeps activation outliers down in FP8 and trains like its high-precision self",
    setting="4 layers, hidden 64, every block GEMM and the attention BMMs in emulated FP8 (delayed scaling), lr 1e-2 "
    "constant, 100 steps on the embedded corpus; the baseline is transformers' Llama at the same size, in FP8 and, as "
    "the control of FP8's own role, in FP32.",
    fast_budget={"100 steps": "30 steps"},
    run=_fog_run,
    claims=[
        Claim("qkv-input kurtosis stays below the Llama baseline's under FP8 (second half of the run; mean gap > its "
              "standard error over seeds)",
              "prior recipes' outliers grow and diverge in fully-FP8 training; FOG's do not (abstract)",
              _fog_kurtosis),
        # the control: whether FP8 itself raises the baseline's outliers at this scale. Reported: on 2026-12-06 Llama's
        # whole-run kurtosis was lower in FP8 than in FP32 on 2 of 3 seeds (docs/reproductions.md)
        Claim("the baseline's (Llama's) qkv-input kurtosis is higher in FP8 than in FP32 (second half of the run)",
              "prior recipes' outliers grow and diverge in fully-FP8 training (abstract)", _fp8_raises_llama_kurtosis,
              asserted=False),
        Claim("FP8 loss within 3% of the same model in high precision",
              "BF16-level quality with FP8 GEMMs (abstract)", _fog_tracks_high_precision),
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- compliance
def _compliance_run(seed: int, fast: bool, workdir: str) -> dict:
    steps = ["--train_steps", "40", "--continual_steps", "20"] if fast else []
    argv = ["--train_models", *steps, "--vocab_size", "512", "--seed", str(seed), "--output_dir", workdir]
    res = _quiet_recipe("compliance", argv)
    removed = {r["domain"]: r["tokens_removed_pct"] for r in res["per_domain"]}
    gaps = {k: {r["task"]: r["gap"] for r in res["dcg_trained"][k]["rows"]} for k in ("scratch", "continual")}
    return {"gaps": gaps, "removed_pct": removed}


def _most_and_least_removed(run: dict) -> tuple[str, list[str]]:
    removed = run["removed_pct"]
    ranked = sorted((d for d in removed if d in run["gaps"]["scratch"]), key=lambda d: removed[d])
    return ranked[-1], [d for d in ranked if removed[d] <= 10.0] or ranked[:1]


def _dcg_domain_vs_general(runs: list[dict]) -> tuple[str, bool]:
    hit, general = [], []
    for r in runs:
        top, low = _most_and_least_removed(r)
        hit.append(r["gaps"]["scratch"][top])
        general.append(_mean(r["gaps"]["scratch"][d] for d in low))
    top, low = _most_and_least_removed(runs[0])
    ours = f"DCG {top}: {mean_spread(hit, '{:+.2f}')} %; domains with <= 10% removed ({', '.join(low)}): " + mean_spread(
        general, "{:+.2f}"
    ) + " %"
    # asserted per seed: the most-removed domain's gap exceeds the little-removed ones' by more than 1 point on every
    # seed; and "no loss where little was removed": the mean of the little-removed domains' gap below 2 points or,
    # where the seeds spread more, below twice its standard error. One-sided: with the same number of steps, the
    # compliant model sees about twice as many tokens of the untouched domains (its set lost 53% of the tokens), so
    # that gap leans negative (seeds 0-10 on 2026-12-07: -1.18 +- 2.37, negative on 9 of 11), and the two-sided
    # |mean| rule failed 16 of the 165 3-seed subsets, every one on the negative side, i.e. where compliance helped
    paired = [h - g for h, g in zip(hit, general)]
    ours += f"; difference per seed {mean_spread(paired, '{:+.2f}')}"
    no_loss = _mean(general) < max(2.0, 2 * _standard_error(general))
    finite = all(math.isfinite(v) for v in hit + general)  # a diverged seed (NaN, +-inf) fails the one-sided rule too
    return ours, finite and all(d > 1.0 for d in paired) and no_loss  # a NaN seed fails (min() would skip it)


def _continual_narrows(runs: list[dict]) -> tuple[str, bool]:
    diffs = []
    for r in runs:
        top, _ = _most_and_least_removed(r)
        diffs.append(r["gaps"]["scratch"][top] - r["gaps"]["continual"][top])
    return f"scratch - continual DCG on the most-removed domain: {mean_spread(diffs, '{:+.2f}')} points", _mean(diffs) > 0


COMPLIANCE = Reproduction(
    method="compliance",
    title="Data compliance gap: no loss on general data, a real gap where opt-outs removed a domain",
    setting="Embedded corpus filtered by the example robots.txt snapshot (the 'language' domain loses all its "
    "documents, 'concurrency' none); 2-layer Llama, hidden 64, 300 steps each from scratch, 150 continual steps; "
    "held-out loss per domain.",
    fast_budget={"300 steps each": "40 steps each", "150 continual steps": "20 continual steps"},
    run=_compliance_run,
    claims=[
        Claim("no DCG where little was removed (mean < max(2, 2 standard errors); one-sided: the compliant model sees "
              "about 2x those domains' tokens in the same steps, so the gap leans negative), clearly positive on the "
              "domain that lost most (above the little-removed domains' by > 1 point on every seed)",
              "close to 0% for general knowledge; declines on domains whose publishers opt out (abstract)",
              _dcg_domain_vs_general),
        Claim("continual pretraining on the non-compliant remainder narrows that domain's gap",
              "setting (b) of the paper: restricted data added later in pretraining", _continual_narrows),
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- hyperinf
HYPERINF_METHODS = ("hyperinf", "datainf", "lissa", "tracin")


def _hyperinf_run(seed: int, fast: bool, workdir: str) -> dict:
    """Spearman correlation of each method with two exact references.

    At rank 4 HyperINF approximates the damped GFIM (`I_r (x) G`) and DataInf/LiSSA the per-layer empirical Fisher
    (the full `rd x rd` FIM): two different targets, so each method is scored against both (`rho`: exact GFIM solve,
    `rho_fim`: exact FIM solve). At rank 1 the two matrices coincide: `rho_rank1` scores every method against the one
    exact influence they all approximate, the comparison the asserted claims use.
    """
    from ..hyperinf.reproduce import accuracy_sweep

    widths = (64, 256) if fast else (64, 256, 1024)
    # rank 1 up to width 512, not 1024: a float64 Schulz inversion at d = 1024 would add half the run's time (the
    # ordering at 1024 is the same, docs/hyperinf.md)
    rank1_widths = (64, 256) if fast else (64, 512)
    records = accuracy_sweep(seeds=(seed,), widths=widths, ranks=(), methods=HYPERINF_METHODS, verbose=False)
    rank1 = accuracy_sweep(seeds=(seed,), widths=rank1_widths, width_rank=1, ranks=(), methods=HYPERINF_METHODS,
                           verbose=False)  # fmt: skip

    def fim(r) -> float:  # the FIM reference exists where r * d <= 4096 (every width here)
        return float("nan") if r.spearman_fim is None else r.spearman_fim

    return {
        "widths": list(widths),
        "rho": {f"{r.method}@{r.width}": r.spearman_gfim for r in records},
        "rho_fim": {f"{r.method}@{r.width}": fim(r) for r in records},
        "rank1_widths": list(rank1_widths),
        "rho_rank1": {f"{r.method}@{r.width}": r.spearman_gfim for r in rank1},  # GFIM = FIM at rank 1
        "cpu_seconds": {f"{r.method}@{r.width}": r.cpu_seconds for r in records}
        | {f"{r.method}@{r.width}/rank1": r.cpu_seconds for r in rank1},
    }


def _best_of(rho: dict[str, list[float]]) -> bool:
    """HyperINF's seed mean above every other method's by more than 0.05 (NaN: False)."""
    return all(_mean(rho["hyperinf"]) > _mean(v) + 0.05 for m, v in rho.items() if m != "hyperinf")


def _rho_text(rho: dict[str, list[float]]) -> str:
    return "; ".join(f"{m} {mean_spread(v)}" for m, v in rho.items())


def _hyperinf_best_at_width(runs: list[dict]) -> tuple[str, bool]:
    """Rank 1, where GFIM = FIM: every method against the same exact influence, at the largest width."""
    wide = runs[0]["rank1_widths"][-1]
    rho = {m: [r["rho_rank1"][f"{m}@{wide}"] for r in runs] for m in HYPERINF_METHODS}
    return f"rank 1, width {wide}, Spearman with the exact influence (GFIM = FIM): {_rho_text(rho)}", _best_of(rho)


def _baselines_degrade(runs: list[dict]) -> tuple[str, bool]:
    """Rank 1 (one common target): DataInf's and LiSSA's correlation falls by more than 0.05 on the seed mean."""
    narrow, wide = runs[0]["rank1_widths"][0], runs[0]["rank1_widths"][-1]
    drops = {m: [r["rho_rank1"][f"{m}@{narrow}"] - r["rho_rank1"][f"{m}@{wide}"] for r in runs]
             for m in ("datainf", "lissa")}  # fmt: skip
    text = f"rank 1, drop from width {narrow} to {wide}: {_rho_text(drops)}"
    return text, all(_mean(v) > 0.05 for v in drops.values())


def _hyperinf_best_on_fim_rank4(runs: list[dict]) -> tuple[str, bool]:
    """Rank 4 (GFIM != FIM): the agreement with both references at the largest width; judged on the FIM, the target
    of DataInf and LiSSA (against the GFIM, HyperINF's own target, it is 1.000 by construction once converged)."""
    wide = runs[0]["widths"][-1]
    fim = {m: [r["rho_fim"][f"{m}@{wide}"] for r in runs] for m in HYPERINF_METHODS}
    gfim = {m: [r["rho"][f"{m}@{wide}"] for r in runs] for m in HYPERINF_METHODS}
    text = (
        f"rank 4, width {wide}, Spearman with the exact FIM influence (DataInf's and LiSSA's target): "
        f"{_rho_text(fim)} | with the exact GFIM influence (HyperINF's target): {_rho_text(gfim)}"
    )
    return text, _best_of(fim)


def _baselines_degrade_own_target(runs: list[dict]) -> tuple[str, bool]:
    """Rank 4: DataInf's and LiSSA's correlation with their own target (the exact FIM) falls by more than 0.05."""
    narrow, wide = runs[0]["widths"][0], runs[0]["widths"][-1]
    drops = {m: [r["rho_fim"][f"{m}@{narrow}"] - r["rho_fim"][f"{m}@{wide}"] for r in runs]
             for m in ("datainf", "lissa")}  # fmt: skip
    text = f"rank 4, drop of the Spearman with the exact FIM influence from width {narrow} to {wide}: {_rho_text(drops)}"
    return text, all(_mean(v) > 0.05 for v in drops.values())


HYPERINF = Reproduction(
    method="hyperinf",
    title="HyperINF against DataInf and LiSSA as the LoRA layer widens: better on a common exact target (rank 1), "
    "not under the per-layer Fisher at rank 4",
    setting="One d x d projection of a small token classifier with a LoRA adapter (20% flipped labels), per-example "
    "gradients once (hf_ext.hyperinf.reproduce). Rank 1 (widths 64 and 512), where the GFIM HyperINF inverts equals "
    "the per-layer Fisher (FIM) DataInf and LiSSA approximate: every method scored against that one exact influence. "
    "Rank 4 (widths 64, 256 and 1024), where they differ: every method scored against both exact solves (damped GFIM "
    "and damped FIM).",
    fast_budget={"widths 64 and 512": "widths 64 and 256", "widths 64, 256 and 1024": "widths 64 and 256"},
    run=_hyperinf_run,
    claims=[
        Claim("at rank 1 (GFIM = FIM, one exact target), HyperINF has the highest rank correlation with the exact "
              "influence at the largest width",
              "better approximation than DataInf/LiSSA as dimension grows (abstract)", _hyperinf_best_at_width),
        Claim("at rank 1, DataInf's and LiSSA's correlation with the exact influence falls as the layer widens",
              "the baselines' approximation error grows with dimension (paper)", _baselines_degrade),
        Claim("at rank 4, HyperINF also agrees best with the exact per-layer Fisher influence (the baselines' target) "
              "at the largest width",
              "control, not a claim of the paper (it reports no comparison with the FIM at rank > 1)",
              _hyperinf_best_on_fim_rank4, asserted=False),
        Claim("at rank 4, DataInf's and LiSSA's correlation with their own target (exact FIM) falls as the layer "
              "widens",
              "the baselines' approximation error grows with dimension (paper)", _baselines_degrade_own_target,
              asserted=False),
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- layer pairing
LP_LAYERS = 6


def train_and_sweep(seed: int, steps: int = 1200, block: int = 32, batch: int = 32, eval_blocks: int = 64) -> list:
    """Train a 6-layer Llama (hidden 48, GQA 4/2, 512-token BPE) on the embedded corpus until its depth matters, then
    return `perplexity_sweep`'s rows over every paired range (row 0: the source model)."""
    import math

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from ..data import build_tokenizer, load_corpus, pack_dataset
    from ..models.layer_parallel.sweep import perplexity_sweep

    tokenizer = build_tokenizer(512)
    train = pack_dataset(load_corpus("train"), tokenizer, block_size=block)
    test = pack_dataset(load_corpus("test"), tokenizer, block_size=block)
    test = test.select(range(min(eval_blocks, len(test))))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=48, intermediate_size=128, num_hidden_layers=LP_LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        attn_implementation="sdpa",
    ))  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))

    def schedule(step: int) -> float:  # 50 warm-up steps, then cosine to 0
        return min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    blocks = torch.tensor(train["input_ids"])
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        ids = blocks[torch.randint(0, len(blocks), (batch,), generator=gen)]
        model(input_ids=ids, labels=ids).loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    model.eval()
    return perplexity_sweep(model, test, progress=False)


def summarize_sweep(rows: list) -> dict:
    """Source perplexity, best and mean perplexity per pair count, single-pair perplexity per start layer."""
    by_count: dict[int, list[float]] = {}
    for r in rows[1:]:
        by_count.setdefault(r["pairs"], []).append(r["perplexity"])
    return {
        "source": rows[0]["perplexity"],
        "best": {n: min(v) for n, v in sorted(by_count.items())},
        "mean": {n: statistics.fmean(v) for n, v in sorted(by_count.items())},
        "single": {r["start"]: r["perplexity"] for r in rows[1:] if r["pairs"] == 1},
    }


def _lp_run(seed: int, fast: bool, workdir: str) -> dict:
    return summarize_sweep(train_and_sweep(seed, steps=200 if fast else 1200))


def _lp_more_pairs_worse(runs: list[dict]) -> tuple[str, bool]:
    counts = sorted(runs[0]["best"], key=int)  # int keys, or str ones after rejudge's round trip through JSON
    curve = [_mean(r["source"] for r in runs)] + [_mean(r["best"][n] for r in runs) for n in counts]
    ok = all(a < b for a, b in zip(curve, curve[1:]))
    return "best perplexity for 0.." + f"{counts[-1]} pairs: " + " -> ".join(f"{v:.2f}" for v in curve), ok


def _lp_late_pairs_cheaper(runs: list[dict]) -> tuple[str, bool]:
    runs = [{**r, "single": {int(k): v for k, v in r["single"].items()}} for r in runs]  # str keys after JSON
    late = [_mean([r["single"][LP_LAYERS - 2], r["single"][LP_LAYERS - 3]]) for r in runs]
    first = [r["single"][1] for r in runs]
    zero = [r["single"][0] for r in runs]
    early = [_mean(pair) for pair in zip(zero, first)]
    text = f"one pair at the two last positions {mean_spread(late, '{:.2f}')}; at (1,2) {mean_spread(first, '{:.2f}')}"
    text += f"; at (0,1) {mean_spread(zero, '{:.2f}')}"
    # asserted: on every seed, the late pairs' mean below the early pairs' mean. Not asserted: the order of the two
    # early pairs, nor the late pairs below each early pair on every seed (seed 1: (1,2) 15.62 below the late pairs'
    # 16.69; fresh seed 7: (1,2) 25.29 above (0,1) 19.06); the margin is reported
    margins = [e - lt for e, lt in zip(early, late)]
    text += f"; early minus late per seed {mean_spread(margins, '{:+.2f}')}"
    return text, all(m > 0 for m in margins)  # a NaN seed fails


LAYER_PARALLEL = Reproduction(
    method="layer_parallel",
    title="Pairing more layers costs more; late pairs cost less than early ones",
    setting="6-layer Llama (hidden 48, GQA 4/2) trained 1200 steps on the embedded corpus, then every paired range "
    "converted exactly (`convert_to_layer_parallel`) and evaluated on 64 held-out blocks.",
    fast_budget={"1200 steps": "200 steps"},
    run=_lp_run,
    claims=[
        Claim("perplexity rises with the number of paired layers",
              "Pareto curve of perplexity vs number of pairs; 95-99% accuracy kept at the chosen depth (abstract)",
              _lp_more_pairs_worse),
        Claim("pairs of late layers hurt less than pairs of early layers (on every seed, the mean over the two last "
              "positions below the mean over (0,1) and (1,2))",
              "operating points pair the later half of the network (paper, code default)", _lp_late_pairs_cheaper),
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- warmup-free
def _warmup_run(seed: int, fast: bool, workdir: str) -> dict:
    from ..recipes.warmup import warmup_gaps

    argv = [
        "--max_steps", "20" if fast else "300", "--learning_rate", "3e-3", "--warmup_fraction", "0.05",
        "--arms", "adamw_warmup,adamw_no_warmup,lion_ar_warmup,lion_ar_no_warmup", "--hidden_size", "128",
        "--intermediate_size", "512", "--num_hidden_layers", "4", "--num_attention_heads", "2", "--vocab_size", "512",
        "--block_size", "128", "--per_device_train_batch_size", "32", "--max_eval_blocks", "64",
        "--rotation_angle", "0.02", "--lion_lr_ratio", "0.3",
        "--metrics_every", "1000", "--logging_steps", "50", "--seed", str(seed),
        "--output_dir", workdir, "--disable_tqdm", "true", "--use_cpu", "true",
    ]  # fmt: skip
    res = _quiet_recipe("warmup", argv)
    return {"gaps": warmup_gaps(res), "eval_loss": {arm: r["eval_loss"] for arm, r in res.items()}}


def _adamw_needs_warmup(runs: list[dict]) -> tuple[str, bool]:
    from ..recipes.warmup import warmup_claim_holds

    adamw = [r["gaps"]["adamw"] for r in runs]
    lion = [r["gaps"]["lion_ar"] for r in runs]
    text = f"warmup gap (no-warmup minus warmup loss): AdamW {mean_spread(adamw)}; LionAR {mean_spread(lion)}"
    return text, len(runs) > 1 and warmup_claim_holds(adamw, lion)


def _lion_ar_without_warmup(runs: list[dict]) -> tuple[str, bool]:
    gaps = [r["eval_loss"]["adamw_warmup"] - r["eval_loss"]["lion_ar_no_warmup"] for r in runs]
    return f"AdamW with warmup - LionAR without warmup, eval loss: {mean_spread(gaps)}", _mean(gaps) >= 0


WARMUP = Reproduction(
    method="warmup",
    title="Normalized optimizers (LionAR) train without warmup; AdamW needs it",
    setting="4-layer Llama, hidden 128, on the embedded corpus, batch 32 x 128 tokens; AdamW lr 3e-3, 300 steps, 5% "
    "warmup in the warmup arms (transformers' WSD schedule, linear decay over the last half); LionAR (betas 0.98, "
    "Nesterov, inverse bias correction) rotating 0.02 rad per step, Lion lr 0.3x AdamW's for the other tensors.",
    fast_budget={"300 steps": "20 steps"},
    run=_warmup_run,
    min_seeds=2,
    min_seeds_reason="AdamW's warmup gap must be clearly positive, mean minus the sample standard deviation over "
    "seeds, which one seed does not have",
    claims=[
        Claim("AdamW's warmup gap is clearly positive (mean - sd > 0), LionAR's near zero (|mean| <= half AdamW's)",
              "normalized updates remove the need for warmup that AdamW has (abstract)", _adamw_needs_warmup),
        Claim("LionAR without warmup reaches at least AdamW-with-warmup's loss",
              "warmup-free training matches tuned warmup (abstract)", _lion_ar_without_warmup,
              asserted=False),  # a tie at this setting: -0.002 +- 0.073 over seeds 0-2 (docs/optim.md)
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- cubic Newton
def _cubic_run(seed: int, fast: bool, workdir: str) -> dict:
    import torch

    from ..recipes.cubic_newton import _run, logistic_nonconvex_loss, make_a9a_like

    n, d, steps = 2000, 20, 100 if fast else 300
    A, y = make_a9a_like(n, d, seed=0)
    make = logistic_nonconvex_loss(A, y, 0.01)
    full = make(torch.arange(n))
    cfg = dict(sgd_lr=0.1, adam_lr=0.01, M=10.0, hessian="dense", solver="exact", krylov_dim=5,
               momentum_type="extrapolated", alpha=0.05, beta=0.05, eval_points=20)  # fmt: skip
    out = {}
    for method in ("cn", "cn_momentum", "adam"):
        rows = _run(make, full, d, method, 1, 2 * steps, n, cfg, seed)["rows"]
        out[method] = _mean(row["grad_norm"] for row in rows[-5:])  # batch-1 iterates jitter: tail average
    return out


def sign_test_p(wins: int, n: int) -> float:
    """One-sided sign test: the chance of at least `wins` wins in `n` fair coin flips (paired seeds, no effect)."""
    return sum(math.comb(n, k) for k in range(wins, n + 1)) / 2**n


def _momentum_lowers_plateau(runs: list[dict]) -> tuple[str, bool]:
    cn, mom = [r["cn"] for r in runs], [r["cn_momentum"] for r in runs]
    wins = sum(m < c for m, c in zip(mom, cn))  # a NaN never wins
    p = sign_test_p(wins, len(runs))
    text = (
        f"tail gradient norm: no momentum {mean_spread(cn)}; momentum {mean_spread(mom)}; lower on {wins}/{len(runs)} "
        f"(sign test p = {p:.3g})"
    )
    return text, p < 0.05 and _mean(mom) < 0.7 * _mean(cn)


def _momentum_vs_adam(runs: list[dict]) -> tuple[str, bool]:
    mom, adam = [r["cn_momentum"] for r in runs], [r["adam"] for r in runs]
    return f"momentum {mean_spread(mom)} vs Adam (same oracle budget) {mean_spread(adam)}", _mean(mom) <= _mean(adam)


CUBIC_NEWTON = Reproduction(
    method="cubic_newton",
    title="Momentum lowers the gradient-norm plateau of stochastic cubic Newton at batch 1",
    setting="Non-convex logistic regression on seeded a9a-like data (n 2000, d 20), batch 1, 600 oracle calls, "
    "extrapolated momentum with alpha = beta = 0.05 (not the library's default), exact cubic subproblem, dense "
    "Hessian; tail = mean full gradient norm over the last 5 of 21 evaluations (`eval_points=20`: step 0, then every 15 of the 300 steps; the tail is steps 240-300).",
    run=_cubic_run,
    fast_budget={"600 oracle calls": "200 oracle calls", "every 15 of the 300 steps; the tail is steps 240-300":
                 "every 5 of the 100 steps; the tail is steps 80-100"},  # fmt: skip
    # 10 seeds: lower on every seed held for seeds 0-4 but not for 5-9 (4/5); over seeds 0-19 it is 18/20, so the
    # claim is the paired effect (sign test over the seeds, and the mean below 0.7x), not "every seed"
    default_seeds=10,
    # the one-sided sign test's smallest p over n seeds is 2**-n: 0.125 at 3, 0.0625 at 4 seeds
    min_seeds=5,
    min_seeds_reason="its claim is judged by a sign test over the seeds (p < 0.05), whose smallest p over n seeds is "
    "2**-n (0.125 at 3, 0.0625 at 4 seeds)",
    claims=[
        Claim("momentum lowers the gradient-norm plateau at batch 1 (paired over seeds: sign test p < 0.05, mean "
              "below 0.7x)",
              "momentum makes second-order methods work with small batches (abstract)", _momentum_lowers_plateau),
        Claim("cubic Newton with momentum is at least as good as Adam at the same oracle budget",
              "not claimed by the paper; reported for context", _momentum_vs_adam, asserted=False),
    ],  # fmt: skip
)


# --------------------------------------------------------------------------------------------------- NeuralGrok
#: The slow test's and `hf-ext reproduce neuralgrok`'s setting: the recipe's defaults (a+b mod 97, width 128, batch 512,
#: coupled Adam at lr 3e-3 and wd 1e-3, T=4, c=1, 1200 steps), test accuracy on a fixed 1024 of the test equations.
NEURALGROK_METHODS = ("none", "none_strong_wd", "normalize", "grokfast_ema", "neuralgrok", "neuralgrok_next_step")
#: runs that are a recipe method with extra arguments: NeuralGrok whose outer step transforms the following real step's
#: gradient instead of recomputing it (`--outer_gradient next_step`); recorded under this name
NEURALGROK_VARIANTS = {"neuralgrok_next_step": ("neuralgrok", ["--outer_gradient", "next_step"])}
NEURALGROK_STEPS = 1200
#: `--layout interleaved` pinned: every recorded run of this reproduction used that token layout ([a, op, b, =, r]);
#: the official code's ("reference", [a, b, op, =, r]) was measured apart for the baseline, the control and NeuralGrok
#: (docs/neuralgrok.md, 2026-12-06: the same picture)
NEURALGROK_ARGV = [
    "--layout", "interleaved",
    "--eval_steps", "20", "--max_eval_samples", "1024", "--logging_steps", "20", "--torch_threads", "1",
    "--disable_tqdm", "true", "--report_to", "none",
]  # fmt: skip


def neuralgrok_run_order(seed: int) -> tuple[str, ...]:
    """The order of the methods' runs on `seed`: the baseline between the two NeuralGrok runs (their cost ratios are
    claims, and a process's later runs tend to be slower), reversed from seed to seed; then the rest."""
    first = ("neuralgrok", "none", "neuralgrok_next_step")
    first = first if seed % 2 == 0 else first[::-1]
    return first + tuple(m for m in NEURALGROK_METHODS if m not in first)


def _neuralgrok_run(seed: int, fast: bool, workdir: str) -> dict:
    """Every method on one seed, one recipe run per method (each in its own folder); `parts` merge over seeds."""
    import os

    parts = []
    for name in neuralgrok_run_order(seed):
        method, extra = NEURALGROK_VARIANTS.get(name, (name, []))
        steps = 40 if fast else NEURALGROK_STEPS
        argv = [*NEURALGROK_ARGV, "--methods", method, "--seeds", str(seed), "--max_steps", str(steps), *extra,
                "--output_dir", os.path.join(workdir, name)]  # fmt: skip
        if fast:
            argv += ["--hidden_size", "32", "--per_device_train_batch_size", "64"]
        part = _quiet_recipe("neuralgrok", argv)
        if name != method:
            part = {**part, "methods": {name: part["methods"][method]}}
        parts.append(part)
    return {"parts": parts}


def neuralgrok_merged(runs: list[dict]) -> dict:
    """The recipe's merged summary (per method: means and spreads over seeds) of a reproduction's per-seed runs."""
    from ..recipes.neuralgrok import merge_results

    parts = [part for run in runs for part in run["parts"]]
    # methods in NEURALGROK_METHODS' order, whatever order they ran in (a stable sort keeps the seeds' order)
    parts.sort(key=lambda part: min(NEURALGROK_METHODS.index(m) for m in part["methods"]))
    return merge_results(parts)


def _ng_steps(res: dict) -> str:
    if res["seeds"] == 1:  # a sample standard deviation of one value is undefined: no "± 0"
        return f"{res['steps_to_target_mean']:.0f} (one seed: no spread; {res['reached']}/1 reached)"
    return f"{res['steps_to_target_mean']:.0f} ± {res['steps_to_target_std']:.0f} ({res['reached']}/{res['seeds']} reached)"


def _ng_faster(res: dict, base: dict, slack: float = 0.8) -> bool:
    """Every seed reached 95%, and in fewer steps on average than `slack` x the baseline's (a lower bound for it)."""
    return res["reached"] == res["seeds"] and res["steps_to_target_mean"] < slack * base["steps_to_target_mean"]


def _ng_faster_than_baseline(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, base, gf = m["neuralgrok"], m["none"], m["grokfast_ema"]
    ratio = base["steps_to_target_mean"] / ng["steps_to_target_mean"]
    text = (f"steps to 95% (lower bounds where not reached): baseline {_ng_steps(base)}, Grokfast-EMA {_ng_steps(gf)}, "
            f"NeuralGrok {_ng_steps(ng)}: {ratio:.2f}x fewer than the baseline")  # fmt: skip
    return text, _ng_faster(ng, base)


def _ng_normalisation_helps(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    base, norm = m["none"], m["normalize"]
    ratio = base["steps_to_target_mean"] / norm["steps_to_target_mean"]
    text = (f"steps to 95%: baseline {_ng_steps(base)}, normalisation only {_ng_steps(norm)}: {ratio:.2f}x fewer "
            "than the baseline")  # fmt: skip
    return text, _ng_faster(norm, base)


def _ng_amplifier_adds(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, norm = m["neuralgrok"], m["normalize"]
    text = f"steps to 95%: NeuralGrok {_ng_steps(ng)} vs normalisation only {_ng_steps(norm)}"
    return text, _ng_faster(ng, norm, slack=0.9)


def _ng_cost(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, norm = m["neuralgrok"], m["normalize"]
    text = (f"mean CPU time per step (outer steps included) vs the baseline: NeuralGrok "
            f"{ng['cpu_cost_per_step_vs_none']:.2f}x, normalisation only {norm['cpu_cost_per_step_vs_none']:.2f}x")  # fmt: skip
    return text, ng["cpu_cost_per_step_vs_none"] <= 1.5


def _ng_next_step_faster(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    nxt, ng, base = m["neuralgrok_next_step"], m["neuralgrok"], m["none"]
    ratio = base["steps_to_target_mean"] / nxt["steps_to_target_mean"]
    text = (f"steps to 95%: NeuralGrok with the next step's gradient {_ng_steps(nxt)} ({ratio:.2f}x fewer than the "
            f"baseline's {_ng_steps(base)}); with the recomputed one {_ng_steps(ng)}")  # fmt: skip
    return text, _ng_faster(nxt, base)


def _ng_next_step_cost(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    nxt, ng, base = m["neuralgrok_next_step"], m["neuralgrok"], m["none"]
    ratio = nxt["cpu_seconds_to_target_mean"] / base["cpu_seconds_to_target_mean"]
    text = (f"mean CPU time per step vs the baseline: {nxt['cpu_cost_per_step_vs_none']:.2f}x (recomputed gradient: "
            f"{ng['cpu_cost_per_step_vs_none']:.2f}x); CPU seconds of training to 95%: "
            f"{nxt['cpu_seconds_to_target_mean']:.1f} vs {base['cpu_seconds_to_target_mean']:.1f} ({ratio:.2f}x)")  # fmt: skip
    ok = nxt["cpu_cost_per_step_vs_none"] <= 1.5 and nxt["reached"] == nxt["seeds"] and ratio < 1.0
    return text, ok


def _ng_strong_wd(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    base, wd = m["none"], m["none_strong_wd"]
    acc = f"{wd['test_accuracy_at_window_mean']:.3f} ± {wd['test_accuracy_at_window_std']:.3f}"
    if wd["seeds"] == 1:
        acc = f"{wd['test_accuracy_at_window_mean']:.3f} (one seed: no spread)"
    text = (f"final weight norm {wd['final_weight_norm_mean']:.1f} vs {base['final_weight_norm_mean']:.1f}; test "
            f"accuracy at step {wd['complexity_window']} {acc}; reached 95% on {wd['reached']}/{wd['seeds']}")  # fmt: skip
    ok = (wd["final_weight_norm_mean"] < 0.5 * base["final_weight_norm_mean"] and wd["reached"] == 0
          and wd["test_accuracy_at_window_mean"] < 0.05)  # fmt: skip
    return text, ok


def _ng_less_training_time(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, base = m["neuralgrok"], m["none"]
    ratio = ng["cpu_seconds_to_target_mean"] / base["cpu_seconds_to_target_mean"]
    text = (f"CPU seconds of training to 95% (lower bounds where not reached): NeuralGrok "
            f"{ng['cpu_seconds_to_target_mean']:.1f}, baseline {base['cpu_seconds_to_target_mean']:.1f} ({ratio:.2f}x)")  # fmt: skip
    return text, ng["reached"] == ng["seeds"] and ratio < 1.0


def _ng_stable_after_grokking(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, base = m["neuralgrok"], m["none"]
    def drops(res):
        return "-" if res["accuracy_drops_mean"] is None else f"{res['accuracy_drops_mean']:.2f}"

    text = (f"falls of test accuracy below 85% after first reaching 95% (mean per seed that reached it): NeuralGrok "
            f"{drops(ng)}, baseline {drops(base)}")  # fmt: skip
    ok = ng["reached"] > 0 and base["reached"] > 0 and ng["accuracy_drops_mean"] == 0 < base["accuracy_drops_mean"]
    return text, ok


def _ng_lower_age(runs: list[dict]) -> tuple[str, bool]:
    m = neuralgrok_merged(runs)["methods"]
    ng, base = m["neuralgrok"], m["none"]
    text = (f"mean raw-gradient AGE over the first {ng['complexity_window']} steps: NeuralGrok "
            f"{ng['mean_age_raw_mean']:.0f}, baseline {base['mean_age_raw_mean']:.0f}")  # fmt: skip
    return text, ng["mean_age_raw_mean"] < base["mean_age_raw_mean"]


NEURALGROK = Reproduction(
    method="neuralgrok",
    title="NeuralGrok: a learned gradient amplifier speeds up grokking",
    setting="The recipe's defaults: a+b mod 97 in the interleaved token layout [a, op, b, =, r] (the official "
    "code's is [a, b, op, =, r], --layout reference: measured apart, docs/neuralgrok.md), 50% train split, 2-layer decoder "
    "(width 128, batch 512), coupled Adam lr 3e-3 wd 1e-3; baseline, normalisation-only control (same scale and "
    "clipping, amplifier fixed to uniform), Grokfast-EMA, NeuralGrok (T=4, c=1; the outer step's gradient recomputed as in the reference, and taken from "
    "the next real step with outer_gradient=next_step) and the baseline with 10x weight decay; 1200 steps each, test "
    "accuracy on 1024 held-out equations every 20 steps.",
    fast_budget={"width 128, batch 512": "width 32, batch 64", "1200 steps each": "40 steps each"},
    run=_neuralgrok_run,
    claims=[
        Claim("NeuralGrok reaches 95% test accuracy on every seed, in < 0.8x the baseline's steps",
              "900 vs 1650 steps on a+b mod 97 (1.83x; Table 1, single runs)", _ng_faster_than_baseline),
        Claim("gradient normalisation alone (the control) reaches 95% on every seed, in < 0.8x the baseline's steps",
              "plain normalisation c*g/norm(g) speeds up and stabilises grokking (paper, ablation)",
              _ng_normalisation_helps),
        Claim("the learned amplifier adds to normalisation alone (< 0.9x the control's steps)",
              "the amplifier is learned to speed generalisation (method)", _ng_amplifier_adds, asserted=False),
        Claim("NeuralGrok's step costs at most 1.5x the baseline's", "overhead not reported (goal set by us)",
              _ng_cost, asserted=False),
        Claim("NeuralGrok reaches 95% in less training time than the baseline", "not reported (goal set by us)",
              _ng_less_training_time),
        Claim("with outer_gradient=next_step (no recomputed gradient) NeuralGrok still reaches 95% on every seed in "
              "< 0.8x the baseline's steps", "not in the paper (the reference recomputes the gradient)",
              _ng_next_step_faster),
        Claim("with outer_gradient=next_step a step costs at most 1.5x the baseline's and training time to 95% is "
              "below the baseline's", "overhead not reported (goal set by us)", _ng_next_step_cost),
        Claim("after grokking NeuralGrok's test accuracy stays up; the baseline's drops",
              "the wd 1e-3 baseline oscillates after grokking; NeuralGrok is stable (paper)",
              _ng_stable_after_grokking, asserted=False),
        Claim("10x weight decay keeps weights small and neither memorises nor generalises",
              "wd 1e-2 neither memorises nor generalises on any task (Fig. 8)", _ng_strong_wd),
        Claim("NeuralGrok lowers the absolute gradient entropy", "lower AGE than standard training (Fig. 6)",
              _ng_lower_age, asserted=False),
    ],  # fmt: skip
)

# --------------------------------------------------------------------------------------------------- federated
def _exposure_gain(history: list[dict], rep: int = 10) -> float:
    """Loss-gap exposure of the `rep`x canaries after the last round minus the base model's (round 0), in nats per
    token: removes the fixed difference in difficulty between the canary texts and the reference texts."""
    return history[-1][f"exposure_{rep}x"] - history[0][f"exposure_{rep}x"]


def _extraction(history: list[dict], rep: int = 10) -> float:
    """Greedy extraction of the `rep`x canaries: exact + approximate rate + mean char-BLEU, max over rounds."""
    return max(h[f"exact_{rep}x"] + h[f"approx_{rep}x"] + h[f"bleu_{rep}x"] for h in history[1:])


def _federated_run(seed: int, fast: bool, workdir: str) -> dict:
    """The recipe's defaults (federated: full, LoRA, LoRA+Goldfish, LoRA+DP) and its centralized counterpart."""
    import os

    budget = ["--num_rounds", "1", "--local_steps", "4"] if fast else []
    common = ["--seed", str(seed), "--torch_threads", "1", *budget]
    out = {}
    for setting, extra in (("federated", []), ("centralized", ["--setting", "centralized", "--configs",
                                                                 "full,lora,lora+goldfish"])):  # fmt: skip
        res = _quiet_recipe("federated", [*common, *extra, "--output_dir", os.path.join(workdir, setting)])
        for name, run in res["runs"].items():
            key = name.split("/")[-1]
            out.setdefault(setting, {})[key] = {
                "exposure_gain": _exposure_gain(run["history"]),
                "exposure_gain_1x": _exposure_gain(run["history"], rep=1),
                "extraction": _extraction(run["history"]),
            }
    return out


def _fed(runs: list[dict], setting: str, config: str, key: str = "exposure_gain") -> list[float]:
    return [r[setting][config][key] for r in runs]


def _full_memorizes(runs: list[dict]) -> tuple[str, bool]:
    full, lora = _fed(runs, "federated", "full", "extraction"), _fed(runs, "federated", "lora", "extraction")
    text = f"greedy extraction of the 10x canaries (exact + approximate + char-BLEU): full {mean_spread(full)}, LoRA {mean_spread(lora)}"
    return text, _mean(full) > 0.2 and _mean(full) > _mean(lora) + 0.1


def _lora_memorizes_less(runs: list[dict]) -> tuple[str, bool]:
    full, lora, gold = (_fed(runs, "federated", c) for c in ("full", "lora", "lora+goldfish"))
    every = all(f > lo > g for f, lo, g in zip(full, lora, gold))
    text = (f"exposure gain of the 10x canaries (nats/token): full {mean_spread(full, '{:.2f}')}, LoRA "
            f"{mean_spread(lora, '{:.2f}')}, LoRA+Goldfish {mean_spread(gold, '{:.2f}')}; ordered on every seed: {every}")  # fmt: skip
    ok = every and _mean(full) > _mean(lora) + 0.2 and _mean(lora) > _mean(gold) + 0.02 and _mean(lora) > 0.05
    return text, ok


def _dp_lowers(runs: list[dict]) -> tuple[str, bool]:
    lora, dp = _fed(runs, "federated", "lora"), _fed(runs, "federated", "lora+dp")
    return f"exposure gain: LoRA {mean_spread(lora, '{:.2f}')}, LoRA+DP {mean_spread(dp, '{:.2f}')}", _mean(dp) < _mean(
        lora
    ) - 0.02


def _centralized_too(runs: list[dict]) -> tuple[str, bool]:
    full, lora, gold = (_fed(runs, "centralized", c) for c in ("full", "lora", "lora+goldfish"))
    full1, lora1 = _fed(runs, "centralized", "full", "exposure_gain_1x"), _fed(runs, "centralized", "lora", "exposure_gain_1x")
    text = (f"centralized exposure gain, 10x canaries: full {mean_spread(full, '{:.2f}')}, LoRA {mean_spread(lora, '{:.2f}')}, "
            f"LoRA+Goldfish {mean_spread(gold, '{:.2f}')}; 1x: full {mean_spread(full1, '{:.2f}')}, LoRA {mean_spread(lora1, '{:.2f}')}")  # fmt: skip
    ok = (_mean(full) > 3 * _mean(lora) and all(f > lo for f, lo in zip(full, lora)) and _mean(full1) > 3 * _mean(lora1)
          and _mean(lora) > 0.05 and _mean(gold) < _mean(lora) - 0.02)  # fmt: skip
    return text, ok


FEDERATED = Reproduction(
    method="federated",
    title="Federated LoRA memorizes less than full fine-tuning; Goldfish and DP lower it further",
    setting="The federated recipe's defaults: tiny Llama pretrained on the embedded corpus, 3 non-IID clients, "
    "FedAvg, 4 rounds x 40 local steps, LoRA on attention and MLP projections, 30% of canaries repeated 10x and 70% "
    "once; DP-SGD on LoRA; and the centralized counterpart (one client, the same 480 optimizer steps).",
    fast_budget={"4 rounds x 40 local steps": "1 round x 4 local steps",
                 "the same 480 optimizer steps": "the same 12 optimizer steps"},  # fmt: skip
    run=_federated_run,
    claims=[
        Claim("full fine-tuning memorizes the 10x canaries measurably (greedy extraction), more than LoRA",
              "full fine-tuning memorizes repeated sequences (paper's setting)", _full_memorizes),
        Claim("exposure: full > LoRA > LoRA+Goldfish on every seed (means apart by > 0.2 and > 0.02; LoRA's mean "
              "> 0.05)",
              "LoRA reduces memorization; Goldfish lowers it further (abstract)", _lora_memorizes_less),
        Claim("DP-SGD lowers LoRA's exposure", "DP defenses reduce memorization (abstract)", _dp_lowers),
        Claim("centralized too: full > 3x LoRA exposure (10x and 1x canaries), Goldfish below LoRA",
              "the LoRA effect holds in centralized fine-tuning (paper)", _centralized_too),
    ],  # fmt: skip
)


REPRODUCTIONS: dict[str, Reproduction] = {
    r.method: r
    for r in (
        COMPLIANCE, CUBIC_NEWTON, FEDERATED, FOG, GRAPE, GRAPE_CORPUS, HYPERINF, LAYER_PARALLEL, METADATA,
        NEURALGROK, WARMUP,
    )  # fmt: skip
}
