"""Modular-arithmetic tasks of the grokking papers as `datasets.Dataset`s, in two token layouts, and their splits.

Layouts (`layout=`): `"reference"` is the official NeuralGrok code's (Blackzxy/NeuralOptGrok, `src/dataset.py` of branch
`neuralgrad`, the same in `neural_grok.py` of `main`): the operands first, then the operators, then `=` and the answer,
e.g. `[a, b, op, =, r]`. `"interleaved"` (the default for now) puts the operators between the operands,
`[a, op, b, =, r]`; every number measured with hf_ext so far was measured with it, so the default changes only after
the reproduction has been re-run with `"reference"`."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from itertools import product

import numpy as np

from ..utils.checks import is_int, is_real, python_scalar


@dataclass(frozen=True)
class ArithmeticTask:
    """One task: how many operands, their ranges, how they are laid out and how the answer is computed."""

    name: str
    num_operator_tokens: int
    description: str

    def vocab_size(self, p: int) -> int:
        """`p` operand tokens, `=` (id `p`) and the operator tokens (ids `p + 1`, ...)."""
        return p + 1 + self.num_operator_tokens


ARITHMETIC_TASKS: dict[str, ArithmeticTask] = {
    "a+b": ArithmeticTask(
        "a+b", 1, "(a + b) mod p, a in [0, p), b in [1, p); reference [a, b, +, =, r], interleaved [a, +, b, =, r]"
    ),
    "a-b": ArithmeticTask(
        "a-b", 1, "(a - b) mod p, a in [0, p), b in [1, p); reference [a, b, -, =, r], interleaved [a, -, b, =, r]"
    ),
    "a*b": ArithmeticTask(
        "a*b", 1, "(a * b) mod p, a in [0, p), b in [1, p); reference [a, b, *, =, r], interleaved [a, *, b, =, r]"
    ),
    "a*a-b": ArithmeticTask(
        "a*a-b",
        2,
        "(a^2 - b) mod p, a in [0, p), b in [1, p); reference [a, b, *, -, =, r], interleaved [a, *, a, -, b, =, r]",
    ),
    "a*c+b*d-e": ArithmeticTask(
        "a*c+b*d-e",
        3,
        "(a*c + b*d - e) mod p, a, b, e in [0, p), c, d in [1, p); reference [a, b, c, d, e, op1, op2, op3, =, r], "
        "interleaved [a, op1, b, op2, c, op1, d, op3, e, =, r]",
    ),
}

#: Token layouts of `build_arithmetic_dataset`: "reference" (the official NeuralGrok code's: operands, operators, `=`,
#: answer) and "interleaved" (operators between the operands; the layout every number in the docs was measured with).
ARITHMETIC_LAYOUTS = ("interleaved", "reference")
#: The default layout, kept until the reproduction has been re-run with "reference".
DEFAULT_LAYOUT = "interleaved"

# Names used by the reference scripts.
_ALIASES = {"axb": "a*b", "axa-b": "a*a-b", "a^2-b": "a*a-b", "axc+bxd-e": "a*c+b*d-e", "ac+bd-e": "a*c+b*d-e"}


def resolve_task(task: str) -> ArithmeticTask:
    """Return the [`ArithmeticTask`] called `task` (reference aliases such as `axb` are accepted)."""
    if not isinstance(task, str):
        raise TypeError(f"task must be a string, got {type(task).__name__}.")
    name = _ALIASES.get(task, task)
    if name not in ARITHMETIC_TASKS:
        raise ValueError(f"Unknown task={task!r}; choose one of {sorted(ARITHMETIC_TASKS)}.")
    return ARITHMETIC_TASKS[name]


def arithmetic_vocab_size(task: str, p: int) -> int:
    """Vocabulary size a model needs for `task` modulo `p` (`p + 2` for the binary tasks); `p` an int >= 2 (a
    `TypeError` / `ValueError` otherwise)."""
    spec = resolve_task(task)
    return spec.vocab_size(_check_modulus(p))


def _check_modulus(p) -> int:
    """`p` as a Python int if it is an int >= 2 (numpy's, a 0-d integer tensor's too), else a `TypeError` /
    `ValueError` naming it."""
    p = python_scalar(p)
    if isinstance(p, bool) or not isinstance(p, numbers.Integral):
        raise TypeError(f"p must be an int (the modulus, e.g. 97), got {p!r}.")
    if p < 2:
        raise ValueError(f"p={p} must be >= 2 (the modulus; the papers use the prime 97, or 7 for a*c+b*d-e).")
    return int(p)


#: Largest dataset `build_arithmetic_dataset` builds (rows); `a*c+b*d-e` reaches it at p = 19 (2.2M), so its papers'
#: p = 7 (12,348 rows) up to p = 17 (1.26M) are built, the binary tasks' p = 97 (9,312) easily.
MAX_EQUATIONS = 2_000_000


def num_arithmetic_equations(task: str, p: int) -> int:
    """Rows of `build_arithmetic_dataset(task, p)`, computed without building it: `p (p - 1)` for the binary tasks,
    `p^3 (p - 1)^2` for `a*c+b*d-e` (a, b, e in [0, p), c, d in [1, p))."""
    spec = resolve_task(task)
    if spec.name == "a*c+b*d-e":
        return p**3 * (p - 1) ** 2
    return p * (p - 1)


def check_layout(layout) -> str:
    """`layout` if it is one of `ARITHMETIC_LAYOUTS`, else a `TypeError` / `ValueError` naming it and the choices."""
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string, one of {ARITHMETIC_LAYOUTS}, got {type(layout).__name__}.")
    if layout not in ARITHMETIC_LAYOUTS:
        raise ValueError(
            f"layout={layout!r} is not a token layout; choose one of {ARITHMETIC_LAYOUTS} (reference: the official "
            "NeuralGrok code's [a, b, op, =, r]; interleaved, the default: [a, op, b, =, r])."
        )
    return layout


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def _equations(task: ArithmeticTask, p: int, layout: str) -> np.ndarray:
    """One row per equation, the answer last; rows in the reference code's order (`torch.cartesian_prod` of the
    operand ranges, the first operand slowest)."""
    eq, op1, op2, op3 = p, p + 1, p + 2, p + 3
    reference = layout == "reference"
    if task.name in ("a+b", "a-b", "a*b", "a*a-b"):
        a, b = np.meshgrid(np.arange(p), np.arange(1, p), indexing="ij")
        a, b = a.ravel(), b.ravel()
        ones = np.ones_like(a)
        if task.name == "a*a-b":
            r = (a * a - b) % p
            if reference:
                cols = [a, b, op1 * ones, op2 * ones, eq * ones, r]
            else:
                cols = [a, op1 * ones, a, op2 * ones, b, eq * ones, r]
        else:
            r = {"a+b": a + b, "a-b": a - b, "a*b": a * b}[task.name] % p
            cols = [a, b, op1 * ones, eq * ones, r] if reference else [a, op1 * ones, b, eq * ones, r]
        return np.stack(cols, axis=1)
    grid = np.array(list(product(range(p), range(p), range(1, p), range(1, p), range(p))), dtype=np.int64)
    a, b, c, d, e = grid.T
    ones = np.ones_like(a)
    r = (a * c + b * d - e) % p
    if reference:
        cols = [a, b, c, d, e, op1 * ones, op2 * ones, op3 * ones, eq * ones, r]
    else:
        cols = [a, op1 * ones, b, op2 * ones, c, op1 * ones, d, op3 * ones, e, eq * ones, r]
    return np.stack(cols, axis=1)


def build_arithmetic_dataset(task: str = "a+b", p: int = 97, layout: str = DEFAULT_LAYOUT):
    """
    All equations of `task` modulo `p`, one row each, in the token layout `layout`.

    Args:
        task (`str`, *optional*, defaults to `"a+b"`):
            One of `a+b`, `a-b`, `a*b`, `a*a-b` (binary tasks) or `a*c+b*d-e` (five operands, used with `p = 7`).
        p (`int`, *optional*, defaults to 97):
            The prime modulus (a numpy integer is accepted too). Operands are tokens `0..p-1`, `=` is `p`, operators
            are `p+1`, `p+2`, `p+3`, in both layouts. A `p` whose task has more than `MAX_EQUATIONS` (2,000,000) rows
            (`num_arithmetic_equations`) is refused with a `ValueError`, e.g. `a*c+b*d-e` with `p = 97` (8.4e9 rows).
        layout (`str`, *optional*, defaults to `"interleaved"`):
            `"reference"`: the official NeuralGrok code's rows, operands first, then the operators, `=` and the answer:
            `[a, b, op, =, r]`, `[a, b, op1, op2, =, r]` for `a*a-b` (6 tokens), `[a, b, c, d, e, op1, op2, op3, =, r]`
            for `a*c+b*d-e` (10 tokens). `"interleaved"` (the default, kept until the reproduction is re-run with
            `"reference"`: every number in docs/neuralgrok.md was measured with it): `[a, op, b, =, r]`,
            `[a, op1, a, op2, b, =, r]` (7 tokens), `[a, op1, b, op2, c, op1, d, op3, e, =, r]` (11 tokens).

    Returns:
        `datasets.Dataset` with columns `input_ids` (the whole equation, answer last in both layouts) and `labels`
        (`-100` everywhere except the answer), so any causal LM trains and is scored on the answer only. 9312 rows
        for a binary task with `p = 97`; 12348 rows for `a*c+b*d-e` with `p = 7`; the same rows in the same order in
        both layouts.
    """
    from datasets import Dataset

    spec = resolve_task(task)
    p = _check_modulus(p)
    layout = check_layout(layout)
    if not _is_prime(p):
        raise ValueError(f"p={p} must be a prime (the papers use 97, or 7 for a*c+b*d-e).")
    size = num_arithmetic_equations(spec.name, p)
    if size > MAX_EQUATIONS:
        raise ValueError(
            f"task {spec.name!r} with p={p} has {size:,} equations, more than {MAX_EQUATIONS:,} (it would exhaust "
            f"memory); use a smaller prime p, e.g. 7 for a*c+b*d-e (12,348 equations)."
        )
    rows = _equations(spec, p, layout)
    labels = np.full_like(rows, -100)
    labels[:, -1] = rows[:, -1]
    ds = Dataset.from_dict({"input_ids": rows.tolist(), "labels": labels.tolist()})
    return ds.with_format("torch")


def min_outer_fraction(train_size: int) -> float:
    """The smallest `outer_fraction` of 3 significant digits whose outer set of `train_size` training rows is not
    empty (`int(outer_fraction * train_size) >= 1`, as [`split_arithmetic_dataset`] sizes it): `1 / train_size`
    rounded *up*, since a value rounded to nearest (0.0476 for 21 rows) can give 0.99 of a row, i.e. none."""
    if train_size < 1:
        raise ValueError(f"train_size={train_size} must be >= 1.")
    exact = 1.0 / train_size
    step = 10.0 ** (math.floor(math.log10(exact)) - 2)  # 3 significant digits
    value = round(math.ceil(exact / step) * step, 12)
    while int(value * train_size) < 1:  # float rounding of the product
        value = round(value + step, 12)
    return value


def split_arithmetic_dataset(dataset, train_fraction: float = 0.5, outer_fraction: float = 0.02, seed: int = 0):
    """
    Random train/test split, and the NeuralGrok split of train into inner and outer sets.

    One permutation drawn from `seed` orders the rows as `[inner | outer | test]`, like the reference code's
    `random_split(dataset, [inner, outer, test])`: `train = inner + outer` (what the baselines train on), `test`
    is the rest.

    Args:
        dataset (`datasets.Dataset`): from [`build_arithmetic_dataset`].
        train_fraction (`float`, *optional*, defaults to 0.5): fraction of all equations used for training, in (0, 1).
        outer_fraction (`float`, *optional*, defaults to 0.02): fraction of the *training* split held out as the
            outer set D_outer, in [0, 1) (0.02 gives the papers' inner:outer = 49:1, i.e. 1% of all data).
        seed (`int`, *optional*, defaults to 0): seed of the permutation, >= 0.

    Returns:
        `datasets.DatasetDict` with splits `train`, `inner`, `outer` and `test`.

    Raises:
        `TypeError` naming the argument for a fraction that is not a number or a seed that is not an int (numpy's
        numbers are accepted, bools are not); `ValueError` for a value out of range or an empty split.
    """
    from datasets import DatasetDict

    train_fraction, outer_fraction = python_scalar(train_fraction), python_scalar(outer_fraction)
    seed = python_scalar(seed)
    for name, value in (("train_fraction", train_fraction), ("outer_fraction", outer_fraction)):
        if not is_real(value):
            raise TypeError(f"{name} must be a number (a fraction such as 0.5), got {value!r}.")
    if not is_int(seed):
        raise TypeError(f"seed must be an int (the permutation's seed, e.g. 0), got {seed!r}.")
    if seed < 0:
        raise ValueError(f"seed={seed} must be >= 0 (numpy's default_rng takes non-negative seeds).")
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction={train_fraction} must be in (0, 1).")
    if not 0.0 <= outer_fraction < 1.0:
        raise ValueError(f"outer_fraction={outer_fraction} must be in [0, 1) (fraction of the training split).")
    n = len(dataset)
    train_size = int(train_fraction * n)
    outer_size = int(outer_fraction * train_size)
    inner_size = train_size - outer_size
    if inner_size == 0 or train_size == n:
        raise ValueError(f"train_fraction={train_fraction} leaves an empty inner or test split for {n} rows.")
    if outer_fraction > 0 and outer_size == 0:
        raise ValueError(
            f"outer_fraction={outer_fraction} of the {train_size} training rows rounds to an empty outer set; use "
            f"outer_fraction >= {min_outer_fraction(train_size)} (or 0 for no outer set)."
        )
    perm = np.random.default_rng(seed).permutation(n)
    return DatasetDict(
        train=dataset.select(perm[:train_size]),
        inner=dataset.select(perm[:inner_size]),
        outer=dataset.select(perm[inner_size:train_size]),
        test=dataset.select(perm[train_size:]),
    )
