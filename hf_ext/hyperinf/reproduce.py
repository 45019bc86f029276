"""How well each method approximates the exact influence as the LoRA layer widens: the HyperINF paper's claim.

The paper (Zhou, Fan, Jaggi, arXiv:2410.05090) claims that HyperINF approximates the exact influence better than
DataInf and LiSSA as the layer dimension grows. `accuracy_sweep` measures that directly on real per-example LoRA
gradients:

1. a small token classifier (frozen random embedding of width `d`, one frozen `d x d` projection with a peft LoRA
   adapter of rank `r`, frozen random head) is LoRA fine-tuned on a synthetic topic task with 20% flipped labels;
2. per-example gradients of the two LoRA matrices are taken once with `PerExampleGradients` (`torch.func`);
3. every method scores the training set against the mean validation gradient, from the same gradients, and is
   compared by Spearman rank correlation with the exact solve of the damped generalized Fisher (GFIM) that HyperINF
   inverts, and, where the `rd x rd` matrix is small enough, with the exact solve of the per-layer empirical Fisher
   (FIM) that DataInf and LiSSA approximate. TracIn (no curvature) is the control. Time is the influence computation
   alone (`fit` + `scores` of `InfluenceEngine`; the shared per-example gradients excluded), as process CPU time
   (robust to other jobs on a shared machine; equal to compute time with one torch thread) and as wall time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from .gradients import PerExampleGradients, tracked_lora_parameters
from .influence import InfluenceConfig, InfluenceEngine

#: method name -> `InfluenceConfig` options. `exact_gfim` is the target; `hyperinf_reference` is the reference code's
#: setting (X_0 = 5e-5 I, 30 fixed iterations, extra damping 1e-3).
SWEEP_METHODS: dict[str, dict] = {
    "hyperinf": {"method": "hyperinf"},
    "hyperinf_reference": {
        "method": "hyperinf",
        "schulz_init": "identity",
        "schulz_iterations": 30,
        "schulz_tol": None,
        "schulz_extra_damping": 1e-3,
    },
    "datainf": {"method": "datainf"},
    "lissa": {"method": "lissa"},
    "tracin": {"method": "tracin"},
    "exact_gfim": {"method": "exact", "exact_curvature": "gfim"},
    "exact_fim": {"method": "exact", "exact_curvature": "fim"},
}


class TokenClassifier(torch.nn.Module):
    """Mean-pooled token classifier with one `width x width` projection (the LoRA target `proj`).

    `forward(input_ids, labels)` returns a transformers `SequenceClassifierOutput`, so `PerExampleGradients` and
    `Trainer`-style code treat it like a transformers model.
    """

    def __init__(self, vocab_size: int, width: int, num_labels: int):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab_size, width)
        self.proj = torch.nn.Linear(width, width)
        self.head = torch.nn.Linear(width, num_labels)
        torch.nn.init.normal_(self.embed.weight, std=1.0)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None):
        from transformers.modeling_outputs import SequenceClassifierOutput

        hidden = self.embed(input_ids)
        hidden = hidden + torch.nn.functional.gelu(self.proj(hidden))
        logits = self.head(hidden.mean(dim=1))
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)


def topic_task(
    num_train: int, num_val: int, seq_len: int, vocab_size: int, num_labels: int, noise_rate: float, seed: int
) -> tuple[list[dict], list[dict], np.ndarray]:
    """Synthetic topic classification: each label owns a block of the vocabulary; a sequence draws about half of its
    tokens from its label's block and the rest uniformly. A share `noise_rate` of the training labels is flipped.

    Returns `(train, val, is_noisy)` as lists of `{"input_ids", "labels"}` dicts.
    """
    rng = np.random.default_rng(seed)
    block = vocab_size // num_labels

    def draw(count: int) -> tuple[list[dict], np.ndarray]:
        labels = rng.integers(0, num_labels, size=count)
        rows = []
        for label in labels:
            topical = rng.random(seq_len) < 0.5
            ids = np.where(
                topical, label * block + rng.integers(0, block, seq_len), rng.integers(0, vocab_size, seq_len)
            )
            rows.append({"input_ids": ids.tolist(), "labels": int(label)})
        return rows, labels

    train, labels = draw(num_train)
    val, _ = draw(num_val)
    is_noisy = np.zeros(num_train, dtype=bool)
    is_noisy[rng.choice(num_train, size=int(round(noise_rate * num_train)), replace=False)] = True
    for row, example in enumerate(train):
        if is_noisy[row]:
            example["labels"] = int((labels[row] + rng.integers(1, num_labels)) % num_labels)
    return train, val, is_noisy


def lora_gradients(
    width: int,
    rank: int,
    seed: int,
    num_train: int = 200,
    num_val: int = 40,
    seq_len: int = 8,
    vocab_size: int = 512,
    num_labels: int = 4,
    train_steps: int = 40,
    learning_rate: float = 1e-2,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict]:
    """LoRA fine-tune a `TokenClassifier` of width `width` (adapter rank `rank`) and return its per-example gradients.

    Returns `(train_grads, val_grads, info)`: `{name: (n, r, d)}` rank-first float32 gradients of `lora_A`/`lora_B`
    for the training and validation examples, and `info` (train accuracy on the noisy labels, seconds).
    """
    from peft import LoraConfig, get_peft_model

    start = time.perf_counter()
    torch.manual_seed(seed)
    train, val, _ = topic_task(num_train, num_val, seq_len, vocab_size, num_labels, 0.2, seed)
    model = get_peft_model(
        TokenClassifier(vocab_size, width, num_labels),
        LoraConfig(r=rank, lora_alpha=2 * rank, use_rslora=True, lora_dropout=0.0, target_modules=["proj"]),
    )
    ids = torch.tensor([row["input_ids"] for row in train])
    labels = torch.tensor([row["labels"] for row in train])
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    for _ in range(train_steps):  # full-batch LoRA fine-tuning
        optimizer.zero_grad()
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(input_ids=ids).logits.argmax(-1) == labels).float().mean())
    tracked = tracked_lora_parameters(model)
    grads = PerExampleGradients(model, tracked, batch_size=50)

    def collect(rows: list[dict]) -> dict[str, torch.Tensor]:
        chunks = list(grads.iterate(rows))
        return {m.name: torch.cat([c[m.name] for c in chunks]) for m in tracked}

    train_grads, val_grads = collect(train), collect(val)
    return train_grads, val_grads, {"train_accuracy": accuracy, "seconds": time.perf_counter() - start}


def _source(grads: dict[str, torch.Tensor], batch_size: int = 50):
    n = next(iter(grads.values())).shape[0]

    def source():
        for start in range(0, n, batch_size):
            yield {name: t[start : start + batch_size] for name, t in grads.items()}

    return source


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


@dataclass
class SweepRecord:
    """One (seed, width, rank, method) measurement."""

    seed: int
    width: int
    rank: int
    method: str
    spearman_gfim: float
    spearman_fim: float | None
    seconds: float
    cpu_seconds: float
    train_accuracy: float


def accuracy_sweep(
    seeds: Sequence[int] = (0, 1, 2),
    widths: Sequence[int] = (64, 128, 256, 512, 1024),
    width_rank: int = 4,
    ranks: Sequence[int] = (1, 4, 16),
    rank_width: int = 256,
    methods: Sequence[str] = tuple(SWEEP_METHODS),
    max_fim_dim: int = 4096,
    verbose: bool = True,
) -> list[SweepRecord]:
    """Spearman correlation of each method's influence with the exact GFIM-inverse influence, and its time.

    Runs every width of `widths` at rank `width_rank` and every rank of `ranks` at width `rank_width`, for each seed.
    `exact_fim` (and the FIM correlation column) is skipped where `rank * width > max_fim_dim`.
    """
    unknown = sorted(set(methods) - set(SWEEP_METHODS))
    if unknown:
        raise ValueError(f"`methods`: unknown {unknown}; choose among {list(SWEEP_METHODS)}.")
    configs = list(dict.fromkeys([(w, width_rank) for w in widths] + [(rank_width, r) for r in ranks]))
    records: list[SweepRecord] = []
    for seed in seeds:
        for width, rank in configs:
            train, val, info = lora_gradients(width, rank, seed)
            shapes = {name: tuple(t.shape[1:]) for name, t in train.items()}
            fim_ok = rank * width <= max_fim_dim
            scores: dict[str, np.ndarray] = {}
            seconds: dict[str, float] = {}
            cpu_seconds: dict[str, float] = {}
            references = ["exact_gfim"] + (["exact_fim"] if fim_ok else [])
            for method in references + [m for m in methods if m not in references]:
                if method == "exact_fim" and not fim_ok:
                    continue
                # `max_fim_dim` caps only the full-FIM solve; the GFIM target (one factor's side) is always solved
                limit = max_fim_dim if method == "exact_fim" else max(4096, *(max(s) for s in shapes.values()))
                config = InfluenceConfig(max_exact_dim=limit, **SWEEP_METHODS[method])
                engine = InfluenceEngine(config, shapes)
                start, cpu_start = time.perf_counter(), time.process_time()
                engine.fit(_source(train))
                scores[method] = engine.scores(_source(val)).double().numpy()
                seconds[method] = time.perf_counter() - start
                cpu_seconds[method] = time.process_time() - cpu_start
            for method in methods:
                if method not in scores:
                    continue
                record = SweepRecord(
                    seed=seed,
                    width=width,
                    rank=rank,
                    method=method,
                    spearman_gfim=_spearman(scores[method], scores["exact_gfim"]),
                    spearman_fim=_spearman(scores[method], scores["exact_fim"]) if "exact_fim" in scores else None,
                    seconds=seconds[method],
                    cpu_seconds=cpu_seconds[method],
                    train_accuracy=info["train_accuracy"],
                )
                records.append(record)
                if verbose:
                    fim_text = "-" if record.spearman_fim is None else f"{record.spearman_fim:.4f}"
                    print(
                        f"seed {seed} width {width:5d} rank {rank:3d} {method:<19} rho_gfim {record.spearman_gfim:.4f}"
                        f" rho_fim {fim_text:>7} cpu {record.cpu_seconds:8.3f} s wall {record.seconds:8.3f} s"
                        f" (train acc {info['train_accuracy']:.2f})",
                        flush=True,
                    )
    return records


def summarize(records: Sequence[SweepRecord]) -> list[dict]:
    """Mean and spread (min-max over seeds) per (width, rank, method), in sweep order."""
    groups: dict[tuple[int, int, str], list[SweepRecord]] = {}
    for record in records:
        groups.setdefault((record.width, record.rank, record.method), []).append(record)
    rows = []
    for (width, rank, method), group in groups.items():
        gfim = np.array([r.spearman_gfim for r in group])
        fim = np.array([r.spearman_fim for r in group if r.spearman_fim is not None])
        secs = np.array([r.seconds for r in group])
        cpu = np.array([r.cpu_seconds for r in group])
        rows.append(
            {
                "width": width,
                "rank": rank,
                "method": method,
                "seeds": len(group),
                "rho_gfim_mean": float(gfim.mean()),
                "rho_gfim_min": float(gfim.min()),
                "rho_gfim_max": float(gfim.max()),
                "rho_fim_mean": float(fim.mean()) if fim.size else None,
                "rho_fim_min": float(fim.min()) if fim.size else None,
                "rho_fim_max": float(fim.max()) if fim.size else None,
                "seconds_mean": float(secs.mean()),
                "cpu_seconds_mean": float(cpu.mean()),
            }
        )
    return rows


def markdown_table(rows: Sequence[dict]) -> str:
    """The summary as a markdown table: mean [min, max] over seeds."""

    def span(row: dict, key: str) -> str:
        if row[f"{key}_mean"] is None:
            return "-"
        return f"{row[f'{key}_mean']:.3f} [{row[f'{key}_min']:.3f}, {row[f'{key}_max']:.3f}]"

    lines = [
        "| width d | rank r | method | Spearman vs exact GFIM | Spearman vs exact FIM | CPU s | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['width']} | {row['rank']} | {row['method']} | {span(row, 'rho_gfim')} | {span(row, 'rho_fim')} "
            f"| {row['cpu_seconds_mean']:.3f} | {row['seconds_mean']:.3f} |"
        )
    return "\n".join(lines)


def records_as_dicts(records: Sequence[SweepRecord]) -> list[dict]:
    return [asdict(r) for r in records]
