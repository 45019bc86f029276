"""The metric cards' examples (`hf_ext/evaluation/metrics/*/README.md`) print what their comments say (dc27 F4).

`tests/test_docs_snippets.py` checks that the cards' calls fit the real signatures, not what they return: the
layer-pairing card showed `95.0` where the module gives `94.99999999999999`. A comment's `...` stands for further
digits, as in the data compliance gap card's `1.923...`.
"""

from __future__ import annotations

import ast
import glob
import os
import re

import pytest

_CARDS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "hf_ext", "evaluation", "metrics", "*",
                                       "README.md")))  # fmt: skip


def _examples(path: str) -> list[tuple[str, str, str]]:
    """(statements, last expression, expected output comment) of every snippet that ends in `expr` + `# {...}`."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    found = []
    for block in re.findall(r"```python\n(.*?)```", text, re.S):
        lines = block.rstrip("\n").splitlines()
        if not lines or not lines[-1].startswith("# {"):
            continue
        body = ast.parse("\n".join(lines[:-1]))
        *statements, last = body.body
        if not isinstance(last, ast.Expr):
            continue
        found.append((ast.unparse(ast.Module(statements, [])), ast.unparse(last.value), lines[-1][2:]))
    return found


def _pattern(expected: str) -> re.Pattern:
    return re.compile(re.escape(expected).replace(re.escape("..."), r"\d*") + r"\Z")


def test_the_cards_have_examples_with_outputs():
    examples = [e for card in _CARDS for e in _examples(card)]
    assert len(_CARDS) == 4 and len(examples) >= 3


@pytest.mark.parametrize("card", _CARDS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_metric_card_example_prints_its_documented_output(card):
    for statements, expression, expected in _examples(card):
        namespace: dict = {}
        exec(statements, namespace)  # noqa: S102 (the card's own example)
        result = str(eval(expression, namespace))  # noqa: S307
        assert _pattern(expected).match(result), f"{card}: {expression} gave {result}, the card says {expected}"
