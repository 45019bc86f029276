"""Stochastic cubic Newton with/without momentum vs SGD and Adam: non-convex logistic regression and a tiny network.

Run as `python scripts/cubic_newton.py` or `hf-ext run cubic_newton`, in one process (a multi-process launch is
refused up front). Problem 1 is logistic regression with the
non-convex regulariser `lam * sum_j x_j^2 / (1 + x_j^2)` on a synthetic a9a-like dataset (sparse binary features,
about a quarter positive labels); problem 2 is a one-hidden-layer network classifying the embedded corpus' documents
into their domains from bag-of-token features. Every method runs at batch size 1 and at a larger batch; the recipe
writes `cubic_newton_results.json` and `cubic_newton.png` (full loss and full gradient norm against steps and against
oracle calls) to `--output_dir`.

Oracle calls count per-sample evaluations: a batch-`b` gradient is `b` calls, a batch-`b` Hessian or Hessian-vector
product is `b` more.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..utils.io import atomic_savefig, atomic_write_results

METHODS = ("sgd", "adam", "cn", "cn_momentum")


@dataclass
class CubicNewtonRecipeArguments:
    output_dir: str = field(default="outputs/cubic_newton", metadata={"help": "Where results and plots go."})
    problems: str = field(default="logistic,corpus", metadata={"help": "Comma list from: logistic, corpus."})
    methods: str = field(default=",".join(METHODS), metadata={"help": f"Comma list from: {', '.join(METHODS)}."})
    batch_sizes: str = field(default="1,64", metadata={"help": "Comma list of batch sizes."})
    oracle_budget: int = field(
        default=1200, metadata={"help": "Per-sample oracle calls per run on the logistic problem (x batch 1 = steps)."}
    )
    corpus_oracle_budget: int = field(
        default=3000, metadata={"help": "Per-sample oracle calls on the corpus problem."}
    )
    n_samples: int = field(default=5000, metadata={"help": "Samples of the a9a-like dataset."})
    n_features: int = field(
        default=40, metadata={"help": "Binary features of the a9a-like dataset (a9a itself has 123)."}
    )
    regularizer: float = field(default=0.01, metadata={"help": "Weight lam of the non-convex regulariser."})
    sgd_lr: float = field(default=0.1, metadata={"help": "SGD learning rate."})
    adam_lr: float = field(default=0.01, metadata={"help": "Adam learning rate."})
    cubic_M: float = field(default=10.0, metadata={"help": "Cubic regularisation constant M."})
    momentum_type: str = field(
        default="hessian_corrected",
        metadata={
            "help": "cn_momentum variant: hessian_corrected (the default of CubicNewton), extrapolated (what `hf-ext "
            "reproduce cubic_newton` runs) or ema."
        },
    )
    alpha: float = field(default=0.05, metadata={"help": "Gradient momentum weight of cn_momentum."})
    beta: float = field(default=0.05, metadata={"help": "Hessian momentum weight of cn_momentum."})
    corpus_hidden: int = field(default=16, metadata={"help": "Hidden units of the corpus network."})
    corpus_vocab: int = field(default=512, metadata={"help": "Tokenizer vocabulary (= input features)."})
    krylov_dim: int = field(default=5, metadata={"help": "Lanczos subspace of cubic Newton on the corpus network."})
    eval_points: int = field(default=40, metadata={"help": "Full-objective evaluations per run."})
    seed: int = field(default=0, metadata={"help": "Random seed (data sampling and init)."})


def make_a9a_like(n_samples: int = 5000, n_features: int = 123, seed: int = 0):
    """Synthetic stand-in for LIBSVM a9a: sparse binary features (~14 active per row, one-hot-like blocks with
    skewed frequencies) and labels drawn from a planted logistic model whose logit is shifted so 24% of rows have a
    positive one (a9a's rate; the drawn labels give about 25% positives at 123 features, 25-32% at 40). Every draw
    comes from one generator seeded with `seed`, so equal arguments give equal data. Returns `(A, y)` with `A` float64
    `(n, d)` in {0, 1} and `y` in {-1, +1}."""
    import torch

    if n_samples < 2 or n_features < 14:
        raise ValueError("make_a9a_like needs n_samples >= 2 and n_features >= 14.")
    g = torch.Generator().manual_seed(seed)
    blocks = torch.linspace(0, n_features, 15).long()  # 14 categorical attributes, one active value each
    A = torch.zeros(n_samples, n_features, dtype=torch.float64)
    for lo, hi in zip(blocks[:-1].tolist(), blocks[1:].tolist()):
        width = hi - lo
        # Dirichlet(0.5, ..., 0.5) from the seeded generator: Gamma(1/2) = Z^2 / 2 with Z standard normal
        z2 = torch.randn(width, generator=g, dtype=torch.float64).square()
        probs = z2 / z2.sum()
        idx = torch.multinomial(probs, n_samples, replacement=True, generator=g)
        A[torch.arange(n_samples), lo + idx] = 1.0
    w_star = torch.randn(n_features, generator=g, dtype=torch.float64)
    logits = A @ w_star
    logits = logits - torch.quantile(logits, 0.76)  # 24% positive logits, like a9a's positive rate
    y = torch.where(torch.rand(n_samples, generator=g, dtype=torch.float64) < torch.sigmoid(2 * logits), 1.0, -1.0)
    return A, y


def logistic_nonconvex_loss(A, y, lam: float):
    """`f(x; batch) = mean log(1 + exp(-y a.x)) + lam * sum x_j^2/(1+x_j^2)` as a factory over index tensors."""
    import torch

    def make(idx):
        Ab, yb = A[idx], y[idx]

        def f(x):
            return torch.nn.functional.softplus(-yb * (Ab @ x)).mean() + lam * (x**2 / (1 + x**2)).sum()

        return f

    return make


def _run(make_fn, full_fn, dim: int, method: str, batch: int, budget: int, n: int, cfg, seed: int, init=None) -> dict:
    """Run one method; return evaluation rows (step, oracle calls, full loss, full gradient norm)."""
    import torch

    from ..optim.cubic_newton import CubicNewton

    g = torch.Generator().manual_seed(seed)
    x = torch.nn.Parameter(init.clone() if init is not None else torch.zeros(dim, dtype=torch.float64))
    per_step = batch * (1 if method in ("sgd", "adam") else 2)
    steps = max(budget // per_step, 1)
    if method == "sgd":
        opt = torch.optim.SGD([x], lr=cfg["sgd_lr"])
    elif method == "adam":
        opt = torch.optim.Adam([x], lr=cfg["adam_lr"])
    else:
        kw = dict(M=cfg["M"], hessian=cfg["hessian"], solver=cfg["solver"], krylov_dim=cfg["krylov_dim"])
        if method == "cn":
            opt = CubicNewton([x], momentum="none", **kw)
        else:
            opt = CubicNewton([x], momentum=cfg["momentum_type"], alpha=cfg["alpha"], beta=cfg["beta"], **kw)
    every = max(steps // cfg["eval_points"], 1)
    rows = []
    oracle = 0

    def evaluate(step):
        xx = x.detach()
        grad = torch.func.grad(full_fn)(xx)
        rows.append(
            {"step": step, "oracle_calls": oracle, "loss": float(full_fn(xx)), "grad_norm": float(grad.norm())}
        )

    evaluate(0)
    for step in range(1, steps + 1):
        idx = torch.randint(0, n, (batch,), generator=g)
        fn = make_fn(idx)
        if method in ("sgd", "adam"):
            opt.zero_grad()
            x.grad = torch.func.grad(fn)(x.detach())
            opt.step()
            oracle += batch
        else:
            opt.step(lambda fn=fn: fn)
            st = opt.last_stats
            # a dense Hessian is one per-sample call each; HVPs of one Lanczos solve share one Hessian sample
            oracle += batch * (st.grad_evals + (1 if (st.hess_evals or st.hvp_evals) else 0))
        if not math.isfinite(float(x.detach().norm())):
            evaluate(step)  # the last row is where the run stopped (non-finite), not an earlier finite point
            return {"method": method, "batch_size": batch, "rows": rows, "diverged_at_step": step}
        if step % every == 0 or step == steps:
            evaluate(step)
    return {"method": method, "batch_size": batch, "rows": rows, "diverged_at_step": None}


def run_logistic(args: CubicNewtonRecipeArguments, methods: list[str], batches: list[int], seed: int) -> list[dict]:
    """All methods x batch sizes on the a9a-like non-convex logistic regression."""
    import torch

    A, y = make_a9a_like(args.n_samples, args.n_features, seed=args.seed)
    make = logistic_nonconvex_loss(A, y, args.regularizer)
    full = make(torch.arange(A.shape[0]))
    cfg = dict(
        sgd_lr=args.sgd_lr,
        adam_lr=args.adam_lr,
        M=args.cubic_M,
        hessian="dense",
        solver="exact",
        krylov_dim=args.krylov_dim,
        momentum_type=args.momentum_type,
        alpha=args.alpha,
        beta=args.beta,
        eval_points=args.eval_points,
    )
    out = []
    for b in batches:
        for m in methods:
            res = _run(make, full, A.shape[1], m, b, args.oracle_budget, A.shape[0], cfg, seed)
            res["problem"] = "logistic"
            out.append(res)
            last = res["rows"][-1]
            print(
                f"[cubic_newton] logistic {m:12s} batch {b:3d}: loss {last['loss']:.4f} |grad| {last['grad_norm']:.2e}"
            )
    return out


def corpus_problem(args: CubicNewtonRecipeArguments):
    """Bag-of-token features of the embedded corpus -> domain labels; a 1-hidden-layer tanh network as a flat
    parameter function. Returns `(make_fn, full_fn, dim, n, init)`."""
    import torch

    from ..data import build_tokenizer, load_corpus

    tok = build_tokenizer(args.corpus_vocab)
    ds = load_corpus("train")
    domains = sorted(set(ds["domain"]))
    X = torch.zeros(len(ds), len(tok), dtype=torch.float64)
    for i, text in enumerate(ds["text"]):
        ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"], dtype=torch.long)
        X[i].index_add_(0, ids, torch.ones(len(ids), dtype=torch.float64))
    X = torch.log1p(X)
    X = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    labels = torch.tensor([domains.index(d) for d in ds["domain"]])
    V, Hd, C = X.shape[1], args.corpus_hidden, len(domains)
    shapes = [(Hd, V), (Hd,), (C, Hd), (C,)]
    sizes = [math.prod(s) for s in shapes]
    dim = sum(sizes)

    def net(x, idx):
        W1, b1, W2, b2 = (c.view(s) for c, s in zip(torch.split(x, sizes), shapes))
        h = torch.tanh(X[idx] @ W1.T + b1)
        return torch.nn.functional.cross_entropy(h @ W2.T + b2, labels[idx])

    def make(idx):
        return lambda x: net(x, idx)

    full_idx = torch.arange(len(ds))
    g = torch.Generator().manual_seed(args.seed)
    init = torch.cat(
        [
            torch.randn(Hd * V, generator=g, dtype=torch.float64) / math.sqrt(V) * 3,
            torch.zeros(Hd, dtype=torch.float64),
            torch.randn(C * Hd, generator=g, dtype=torch.float64) / math.sqrt(Hd),
            torch.zeros(C, dtype=torch.float64),
        ]
    )
    return make, (lambda x: net(x, full_idx)), dim, len(ds), init


def run_corpus(args: CubicNewtonRecipeArguments, methods: list[str], batches: list[int], seed: int) -> list[dict]:
    make, full, dim, n, init = corpus_problem(args)
    cfg = dict(
        sgd_lr=args.sgd_lr,
        adam_lr=args.adam_lr,
        M=args.cubic_M,
        hessian="fresh",
        solver="lanczos",
        krylov_dim=args.krylov_dim,
        momentum_type=args.momentum_type,
        alpha=args.alpha,
        beta=args.beta,
        eval_points=args.eval_points,
    )
    out = []
    for b in batches:
        for m in methods:
            res = _run(make, full, dim, m, b, args.corpus_oracle_budget, n, cfg, seed, init=init)
            res["problem"] = "corpus"
            out.append(res)
            last = res["rows"][-1]
            print(
                f"[cubic_newton] corpus   {m:12s} batch {b:3d}: loss {last['loss']:.4f} |grad| {last['grad_norm']:.2e}"
            )
    return out


def plot(results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    problems = sorted({r["problem"] for r in results})
    fig, axes = plt.subplots(len(problems), 4, figsize=(20, 4 * len(problems)), squeeze=False)
    for row, prob in zip(axes, problems):
        for res in (r for r in results if r["problem"] == prob):
            label = f"{res['method']} b={res['batch_size']}"
            style = "-" if res["batch_size"] == 1 else "--"
            rows = res["rows"]
            for ax, (xk, yk) in zip(
                row, [("step", "loss"), ("oracle_calls", "loss"), ("step", "grad_norm"), ("oracle_calls", "grad_norm")]
            ):
                ax.plot([r[xk] for r in rows], [r[yk] for r in rows], style, label=label, lw=1)
                ax.set_xlabel(xk.replace("_", " "))
                ax.set_ylabel(f"full {yk.replace('_', ' ')}")
                ax.set_yscale("log")
                ax.set_title(prob)
        row[0].legend(fontsize=7)
    fig.tight_layout()
    atomic_savefig(fig, path, dpi=110)
    plt.close(fig)


# Flags only some methods or problems read: name -> (methods that read it or None for all, problems or None for all).
# --krylov_dim is the Lanczos subspace, used only by the corpus problem (the logistic one solves exactly).
_FLAG_READERS = {
    "sgd_lr": (("sgd",), None),
    "adam_lr": (("adam",), None),
    "cubic_M": (("cn", "cn_momentum"), None),
    "momentum_type": (("cn_momentum",), None),
    "alpha": (("cn_momentum",), None),
    "beta": (("cn_momentum",), None),
    "krylov_dim": (("cn", "cn_momentum"), ("corpus",)),
    "oracle_budget": (None, ("logistic",)),
    "n_samples": (None, ("logistic",)),
    "n_features": (None, ("logistic",)),
    "regularizer": (None, ("logistic",)),
    "corpus_oracle_budget": (None, ("corpus",)),
    "corpus_hidden": (None, ("corpus",)),
    "corpus_vocab": (None, ("corpus",)),
}


def _refuse_unread_flags(args: CubicNewtonRecipeArguments, problems: list[str], methods: list[str]) -> None:
    """A flag that no selected method/problem reads, set away from its default, is an error naming it."""
    from ._common import changed_from_default

    unread = []
    for name in changed_from_default(args, _FLAG_READERS):
        by_methods, by_problems = _FLAG_READERS[name]
        if (by_methods is None or set(by_methods) & set(methods)) and (
            by_problems is None or set(by_problems) & set(problems)
        ):
            continue
        needs = " and ".join(
            part
            for part in (
                f"--methods {'/'.join(by_methods)}" if by_methods else "",
                f"--problems {'/'.join(by_problems)}" if by_problems else "",
            )
            if part
        )
        unread.append(f"--{name} (read only with {needs})")
    if unread:
        raise ValueError(
            f"--problems {','.join(problems)} --methods {','.join(methods)} would ignore {'; '.join(unread)}; drop "
            "them or select a method/problem that uses them."
        )


def validate(args: CubicNewtonRecipeArguments) -> tuple[list[str], list[str], list[int]]:
    import inspect

    from ..optim.cubic_newton import MOMENTUM_TYPES, CubicNewton
    from ..utils.io import ensure_writable_dir

    problems = [p.strip() for p in args.problems.split(",") if p.strip()]
    if not problems or any(p not in ("logistic", "corpus") for p in problems):
        raise ValueError(f"--problems must list logistic and/or corpus, got {args.problems!r}.")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise ValueError(f"--methods must list names from {METHODS}, got {args.methods!r}.")
    try:
        batches = [int(b) for b in args.batch_sizes.split(",") if b.strip()]
    except ValueError as err:
        raise ValueError(f"--batch_sizes must be comma-separated ints, got {args.batch_sizes!r}.") from err
    if not batches or min(batches) < 1:
        raise ValueError(f"--batch_sizes must be positive ints, got {args.batch_sizes!r}.")
    for name, items in (("problems", problems), ("methods", methods), ("batch_sizes", batches)):
        if len(set(items)) != len(items):  # each repeat would be run (and plotted) again
            raise ValueError(f"--{name}={getattr(args, name)!r} repeats an entry; list each once.")
    if args.momentum_type not in MOMENTUM_TYPES or args.momentum_type == "none":
        raise ValueError(f"--momentum_type must be one of {MOMENTUM_TYPES[1:]}, got {args.momentum_type!r}.")
    if args.oracle_budget <= 0 or args.corpus_oracle_budget <= 0:
        raise ValueError("--oracle_budget and --corpus_oracle_budget must be > 0.")
    if not (0 < args.alpha <= 1 and 0 < args.beta <= 1):
        raise ValueError("--alpha and --beta must lie in (0, 1].")
    # one step of a cubic method at batch b costs 2b calls (gradient + Hessian sample), of SGD/Adam b; a budget below
    # one step would be exceeded (a run always takes a step), and the methods would not be compared at equal cost
    step_cost = max(b * (1 if m in ("sgd", "adam") else 2) for m in methods for b in batches)
    for problem, flag in (("logistic", "oracle_budget"), ("corpus", "corpus_oracle_budget")):
        if problem in problems and getattr(args, flag) < step_cost:
            raise ValueError(
                f"--{flag} ({getattr(args, flag)}) is below the cost of one step ({step_cost} oracle calls at batch "
                f"{max(batches)}); raise it or lower --batch_sizes."
            )
    # checked here, not when the first run that uses them starts (after the other methods/problems have run)
    sig = inspect.signature(CubicNewton).parameters  # the optimizer's default bounds on M
    lo, hi = sig["M_min"].default, sig["M_max"].default
    if not lo <= args.cubic_M <= hi:
        raise ValueError(f"--cubic_M must lie in [{lo:g}, {hi:g}], got {args.cubic_M}.")
    for name in ("sgd_lr", "adam_lr"):
        if not 0 < getattr(args, name) < math.inf:
            raise ValueError(f"--{name} must be a finite number > 0, got {getattr(args, name)}.")
    if not 0 <= args.regularizer < math.inf:
        raise ValueError(f"--regularizer must be a finite number >= 0, got {args.regularizer}.")
    for name in ("eval_points", "krylov_dim", "corpus_hidden"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be a positive integer, got {getattr(args, name)}.")
    if "logistic" in problems and (args.n_samples < 2 or args.n_features < 14):
        raise ValueError(
            f"--n_samples must be >= 2 and --n_features >= 14 (one feature per categorical attribute), got "
            f"{args.n_samples} and {args.n_features}."
        )
    if "corpus" in problems:
        from ..data.tokenizer import vocab_size_problem

        problem = vocab_size_problem(args.corpus_vocab, "--corpus_vocab")
        if problem:
            raise ValueError(problem)
    _refuse_unread_flags(args, problems, methods)
    ensure_writable_dir(args.output_dir, "--output_dir")
    return problems, methods, batches


def main(argv: list[str] | None = None) -> list[dict]:
    from ._common import parse_recipe_args, refuse_multiple_processes

    refuse_multiple_processes(
        "cubic_newton",
        "every process would redo the whole float64 study (nothing in it is split) and write the same files",
    )
    (args,) = parse_recipe_args((CubicNewtonRecipeArguments,), argv)
    problems, methods, batches = validate(args)
    from ._common import clear_previous_results

    clear_previous_results(args.output_dir, ("cubic_newton_results.json", "cubic_newton.png"))
    results: list[dict] = []
    if "logistic" in problems:
        results += run_logistic(args, methods, batches, args.seed)
    if "corpus" in problems:
        results += run_corpus(args, methods, batches, args.seed)
    os.makedirs(args.output_dir, exist_ok=True)
    atomic_write_results(os.path.join(args.output_dir, "cubic_newton_results.json"), results, None)
    plot(results, os.path.join(args.output_dir, "cubic_newton.png"))
    print(f"[cubic_newton] wrote {os.path.join(args.output_dir, 'cubic_newton.png')}")
    return results


if __name__ == "__main__":
    main()
