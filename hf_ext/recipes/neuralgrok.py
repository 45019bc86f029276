"""Grokking on modular arithmetic: AdamW baseline vs Grokfast vs NeuralGrok; steps to 95% test accuracy, curves PNG.

Run as `python scripts/neuralgrok.py`, `accelerate launch scripts/neuralgrok.py` or `hf-ext run neuralgrok`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass, field

from ..neuralgrok.trainer import GRADIENT_TRANSFORMS, NeuralGrokConfig


@dataclass
class GrokTaskArguments:
    task: str = field(default="a+b", metadata={"help": "a+b, a-b, a*b, a*a-b or a*c+b*d-e."})
    p: int = field(default=97, metadata={"help": "Prime modulus (97; 7 for a*c+b*d-e)."})
    train_fraction: float = field(default=0.5, metadata={"help": "Fraction of all equations used for training."})
    outer_fraction: float = field(
        default=0.02, metadata={"help": "Fraction of the training split held out as NeuralGrok's outer set (49:1)."}
    )
    methods: str = field(
        default="none,grokfast_ema,neuralgrok",
        metadata={
            "help": "Comma-separated gradient transforms to compare: none, grokfast_ema, grokfast_ma, neuralgrok."
        },
    )
    seeds: str = field(default="0", metadata={"help": "Comma-separated seeds (split, init and data order)."})
    target_accuracy: float = field(default=0.95, metadata={"help": "Test accuracy that counts as grokked."})
    stop_at_target: bool = field(
        default=True, metadata={"help": "Stop a run once it reaches target_accuracy (saves compute)."}
    )
    torch_threads: int | None = field(
        default=None, metadata={"help": "torch.set_num_threads for the runs (1 is fastest on busy shared CPUs)."}
    )


@dataclass
class GrokModelArguments:
    model_type: str = field(
        default="grok_decoder",
        metadata={
            "help": "grok_decoder (the papers' model) or any transformers model type built from config, e.g. llama."
        },
    )
    hidden_size: int = field(default=128, metadata={"help": "Model width."})
    num_hidden_layers: int = field(default=2, metadata={"help": "Decoder layers (4 for a*c+b*d-e)."})
    num_attention_heads: int = field(default=4, metadata={"help": "Attention heads."})


@dataclass
class GrokTrainingArguments(NeuralGrokConfig):
    output_dir: str = field(default="outputs/neuralgrok", metadata={"help": "Where results and curves are written."})
    max_steps: int = field(default=1200, metadata={"help": "Step budget per run."})
    coupled_weight_decay: bool = field(
        default=True,
        metadata={
            "help": "Reference optimizer: torch.optim.Adam with L2 weight decay on every parameter (false: AdamW)."
        },
    )
    learning_rate: float = field(
        default=3e-3, metadata={"help": "Base lr (the papers use 1e-3; 3e-3 groks within the CPU budget)."}
    )
    weight_decay: float = field(
        default=1e-3, metadata={"help": "Weight decay, the same for every method (papers: 1e-3)."}
    )
    eval_strategy: str = field(default="steps", metadata={"help": "Evaluate test accuracy every eval_steps."})
    eval_steps: float = field(
        default=20, metadata={"help": "Steps between test-accuracy evaluations (one eval costs ~3 train steps)."}
    )
    gradient_transform: str = field(
        default="none", metadata={"help": "Set per run from --methods; this value is ignored."}
    )


def _parse_list(text: str, name: str, cast=str) -> list:
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ValueError(f"--{name} is empty; give a comma-separated list.")
    try:
        return [cast(t) for t in items]
    except ValueError as err:
        raise ValueError(f"--{name}={text!r} could not be parsed as a list of {cast.__name__}.") from err


def validate_args(task_args: GrokTaskArguments, model_args: GrokModelArguments, training_args) -> tuple[list, list]:
    """Check every argument before any data is built or anything is written."""
    from ..neuralgrok.data import resolve_task
    from ..utils.io import ensure_writable_dir

    resolve_task(task_args.task)
    methods = _parse_list(task_args.methods, "methods")
    bad = [m for m in methods if m not in GRADIENT_TRANSFORMS]
    if bad:
        raise ValueError(f"--methods has unknown entries {bad}; choose from {list(GRADIENT_TRANSFORMS)}.")
    seeds = _parse_list(task_args.seeds, "seeds", int)
    if not 0.0 < task_args.target_accuracy <= 1.0:
        raise ValueError(f"--target_accuracy={task_args.target_accuracy} must be in (0, 1].")
    if model_args.hidden_size % model_args.num_attention_heads:
        raise ValueError("--hidden_size must be divisible by --num_attention_heads.")
    if training_args.max_steps <= 0:
        raise ValueError("--max_steps must be positive: the runs are compared on a step budget.")
    if task_args.torch_threads is not None and task_args.torch_threads < 1:
        raise ValueError("--torch_threads must be >= 1.")
    if "neuralgrok" in methods and task_args.outer_fraction <= 0:
        raise ValueError("--outer_fraction must be > 0 when --methods includes neuralgrok (it needs D_outer).")
    if "neuralgrok" in methods and training_args.max_grad_norm > 0:
        raise ValueError(
            f"--max_grad_norm={training_args.max_grad_norm} would clip the raw gradient before the NeuralGrok "
            "transform; use --max_grad_norm 0 (NeuralGrok clips after its transform: --amplifier_clip_norm)."
        )
    ensure_writable_dir(training_args.output_dir, "--output_dir")
    return methods, seeds


def build_model(model_args: GrokModelArguments, vocab_size: int, seq_len: int):
    """The papers' decoder, or a transformers causal LM of `model_type` built from config."""
    if model_args.model_type == "grok_decoder":
        from ..neuralgrok.modeling import GrokDecoderConfig, GrokDecoderForCausalLM

        config = GrokDecoderConfig(
            vocab_size=vocab_size,
            hidden_size=model_args.hidden_size,
            num_hidden_layers=model_args.num_hidden_layers,
            num_attention_heads=model_args.num_attention_heads,
            max_position_embeddings=seq_len,
        )
        return GrokDecoderForCausalLM(config)
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(
        model_args.model_type,
        vocab_size=vocab_size,
        hidden_size=model_args.hidden_size,
        intermediate_size=4 * model_args.hidden_size,
        num_hidden_layers=model_args.num_hidden_layers,
        num_attention_heads=model_args.num_attention_heads,
        num_key_value_heads=model_args.num_attention_heads,
        max_position_embeddings=max(seq_len, 16),
    )
    return AutoModelForCausalLM.from_config(config)


def _curves(log_history: list[dict]) -> dict:
    out = {"train_step": [], "train_accuracy": [], "age_raw": [], "age_transformed": [], "eval_step": [], "test": []}
    for entry in log_history:
        if "train_accuracy" in entry:
            out["train_step"].append(entry["step"])
            out["train_accuracy"].append(entry["train_accuracy"])
            out["age_raw"].append(entry.get("age_raw"))
            out["age_transformed"].append(entry.get("age_transformed"))
        if "eval_accuracy" in entry:
            out["eval_step"].append(entry["step"])
            out["test"].append(entry["eval_accuracy"])
    return out


def plot_curves(results: dict, path: str, target: float) -> None:
    """Train (dashed) and test (solid) accuracy per method, and the AGE of raw / transformed gradients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_age) = plt.subplots(1, 2, figsize=(13, 4.5))
    colors = {"none": "tab:blue", "grokfast_ema": "tab:orange", "grokfast_ma": "tab:green", "neuralgrok": "tab:red"}
    for method, res in results["methods"].items():
        color = colors.get(method)
        for i, run in enumerate(res["runs"]):
            c = run["curves"]
            label = method if i == 0 else None
            alpha = 1.0 if i == 0 else 0.35
            ax_acc.plot(c["eval_step"], c["test"], color=color, alpha=alpha, label=f"{label} test" if label else None)
            ax_acc.plot(
                c["train_step"],
                c["train_accuracy"],
                "--",
                color=color,
                alpha=alpha,
                label=f"{label} train" if label else None,
            )
            if i == 0 and any(v is not None for v in c["age_raw"]):
                ax_age.plot(c["train_step"], c["age_raw"], color=color, label=f"{method} raw")
                if any(v is not None for v in c["age_transformed"]):
                    ax_age.plot(c["train_step"], c["age_transformed"], ":", color=color, label=f"{method} transformed")
    ax_acc.axhline(target, color="gray", lw=0.8, ls=":")
    ax_acc.set(
        xlabel="optimizer step", ylabel="accuracy", title=f"{results['task']} mod {results['p']}", ylim=(0, 1.02)
    )
    ax_acc.legend(fontsize=7)
    ax_age.set(xlabel="optimizer step", ylabel="absolute gradient entropy", title="AGE (first seed)", yscale="symlog")
    ax_age.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def run(task_args: GrokTaskArguments, model_args: GrokModelArguments, training_args: GrokTrainingArguments) -> dict:
    """Train every method on every seed; return and write steps-to-target, per-step cost and curves."""
    methods, seeds = validate_args(task_args, model_args, training_args)
    import torch
    from transformers import set_seed

    from ..neuralgrok.data import arithmetic_vocab_size, build_arithmetic_dataset, split_arithmetic_dataset
    from ..neuralgrok.metrics import arithmetic_accuracy, preprocess_logits_for_accuracy
    from ..neuralgrok.trainer import GrokkingCallback, NeuralGrokTrainer

    if task_args.torch_threads is not None:
        torch.set_num_threads(task_args.torch_threads)
    dataset = build_arithmetic_dataset(task_args.task, task_args.p)
    vocab = arithmetic_vocab_size(task_args.task, task_args.p)
    seq_len = len(dataset[0]["input_ids"])
    results: dict = {"task": task_args.task, "p": task_args.p, "target_accuracy": task_args.target_accuracy}
    runs: dict[str, list[dict]] = {method: [] for method in methods}
    # Seed-major order: every method is done on a seed before the next seed starts.
    for seed in seeds:
        splits = split_arithmetic_dataset(dataset, task_args.train_fraction, task_args.outer_fraction, seed)
        for method in methods:
            set_seed(seed)
            model = build_model(model_args, vocab, seq_len)
            args = dataclasses.replace(
                training_args,
                gradient_transform=method,
                seed=seed,
                output_dir=os.path.join(training_args.output_dir, f"{method}-seed{seed}"),
            )
            callback = GrokkingCallback(task_args.target_accuracy, stop_on_target=task_args.stop_at_target)
            trainer = NeuralGrokTrainer(
                model=model,
                args=args,
                train_dataset=splits["inner"] if method == "neuralgrok" else splits["train"],
                eval_dataset=splits["test"],
                outer_dataset=splits["outer"] if method == "neuralgrok" else None,
                compute_metrics=arithmetic_accuracy,
                preprocess_logits_for_metrics=preprocess_logits_for_accuracy,
                callbacks=[callback],
            )
            trainer.train()
            curves = _curves(trainer.state.log_history)
            runs[method].append(
                {
                    "seed": seed,
                    "steps_to_target": callback.steps_to_target,
                    "steps_run": trainer.state.global_step,
                    "seconds_per_step": callback.seconds_per_step,
                    "final_test_accuracy": curves["test"][-1] if curves["test"] else None,
                    "curves": curves,
                }
            )
            print(
                f"[{method} seed {seed}] steps to {task_args.target_accuracy:.0%} test accuracy: "
                f"{callback.steps_to_target} (ran {trainer.state.global_step} steps, "
                f"{callback.seconds_per_step:.4f} s/step)",
                flush=True,
            )
            if method == "neuralgrok":
                n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                results["amplifier"] = {
                    "hidden_dims": list(trainer.amplifier.hidden_dims),
                    "macs_per_entry": trainer.amplifier.macs_per_entry,
                    "model_parameters": n_params,
                    "transform_macs_per_step": trainer.amplifier.macs_per_entry * n_params,
                }
    results["methods"] = {}
    for method, method_runs in runs.items():
        # A run that never reaches the target counts as "more than the budget" in the median.
        ranked = [r["steps_to_target"] if r["steps_to_target"] is not None else float("inf") for r in method_runs]
        median = statistics.median(ranked)
        results["methods"][method] = {
            "runs": method_runs,
            "median_steps_to_target": None if median == float("inf") else median,
            "median_seconds_per_step": statistics.median(r["seconds_per_step"] for r in method_runs),
        }
    base = results["methods"].get("none")
    for res in results["methods"].values():
        res["cost_per_step_vs_none"] = (
            res["median_seconds_per_step"] / base["median_seconds_per_step"] if base else None
        )
    os.makedirs(training_args.output_dir, exist_ok=True)
    png = os.path.join(training_args.output_dir, "grokking_curves.png")
    plot_curves(results, png, task_args.target_accuracy)
    with open(os.path.join(training_args.output_dir, "neuralgrok_results.json"), "w", encoding="utf-8") as fh:
        json.dump(results, fh, indent=2)
    print(f"\n{task_args.task} mod {task_args.p}, seeds {seeds}, target {task_args.target_accuracy:.0%} test accuracy")
    print(f"{'method':<14}{'median steps':>14}{'per seed':>24}{'s/step':>10}{'x none':>8}")
    for method, res in results["methods"].items():
        per_seed = ",".join(str(r["steps_to_target"]) for r in res["runs"])
        ratio = res["cost_per_step_vs_none"]
        print(
            f"{method:<14}{str(res['median_steps_to_target']):>14}{per_seed:>24}"
            f"{res['median_seconds_per_step']:>10.4f}{(f'{ratio:.2f}' if ratio else '-'):>8}"
        )
    if "amplifier" in results:
        amp = results["amplifier"]
        print(
            f"amplifier {amp['hidden_dims']}: {amp['macs_per_entry']} MACs per gradient entry x "
            f"{amp['model_parameters']} parameters = {amp['transform_macs_per_step'] / 1e6:.0f} MMAC per transform"
        )
    print(f"curves: {png}")
    return results


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    parser = HfArgumentParser((GrokTaskArguments, GrokModelArguments, GrokTrainingArguments))
    task_args, model_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    return run(task_args, model_args, training_args)


if __name__ == "__main__":
    main()
