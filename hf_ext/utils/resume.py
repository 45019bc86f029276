"""`--resume_from_checkpoint` as transformers' example scripts use it, checked before any work starts.

Accepted forms on the command line:

- `--resume_from_checkpoint` (no value), `--resume_from_checkpoint true` / `True` / `last`: the newest complete
  `checkpoint-N` folder in `--output_dir`;
- `--resume_from_checkpoint <folder>`: that checkpoint folder;
- absent, `false`, `none` or an empty value: start from scratch.

A checkpoint folder counts as complete when it holds `trainer_state.json`, which `Trainer` writes last; a folder
left half-written by a killed save is skipped with a warning when picking the newest one, and refused with a clear
error when named explicitly.
"""

from __future__ import annotations

import json
import logging
import os
import re

logger = logging.getLogger(__name__)

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_LAST = {"true", "last", "latest", "yes", "1"}
_NONE = {"", "false", "none", "no", "0"}
TRAINER_STATE_NAME = "trainer_state.json"


def normalize_resume_argv(argv: list[str]) -> list[str]:
    """Give a bare `--resume_from_checkpoint` (last argument, or followed by another flag) the value `last`."""
    out = list(argv)
    for i, tok in enumerate(out):
        if tok == "--resume_from_checkpoint" and (i + 1 == len(out) or out[i + 1].startswith("--")):
            out[i] = "--resume_from_checkpoint=last"
    return out


def checkpoint_problem(path: str) -> str | None:
    """Why `path` is not a usable Trainer checkpoint, or `None` if it is."""
    if not os.path.isdir(path):
        return "it is not a folder"
    state = os.path.join(path, TRAINER_STATE_NAME)
    if not os.path.isfile(state):
        return f"it has no {TRAINER_STATE_NAME} (a save that was interrupted)"
    try:
        with open(state, encoding="utf-8") as fh:
            json.load(fh)
    except (OSError, ValueError) as err:
        return f"its {TRAINER_STATE_NAME} cannot be read ({err})"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest complete `checkpoint-N` in `output_dir`; incomplete ones are skipped with a warning."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        match = _CHECKPOINT_RE.match(name)
        if match and os.path.isdir(os.path.join(output_dir, name)):
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    for _, path in sorted(found, reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("Skipping %s on resume: %s. Delete it or resume from an earlier checkpoint.", path, problem)
    return None


def wants_resume(value: str | bool | None) -> bool:
    """Whether a `--resume_from_checkpoint` value asks to resume at all."""
    if value is None or value is False:
        return False
    return not (isinstance(value, str) and value.strip().lower() in _NONE)


def wants_last(value: str | bool | None) -> bool:
    """Whether a `--resume_from_checkpoint` value asks for the newest checkpoint rather than a named folder."""
    return value is True or (isinstance(value, str) and value.strip().lower() in _LAST)


def resolve_resume_checkpoint(value: str | bool | None, output_dir: str) -> str | None:
    """Turn a `--resume_from_checkpoint` value into a checkpoint folder (or `None`), raising `ValueError` early.

    Args:
        value: the flag's value (`None`/`False` for a fresh run, `True`/`"last"` for the newest checkpoint in
            `output_dir`, or a folder).
        output_dir: the run's `--output_dir`.
    """
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _LAST):
        path = last_complete_checkpoint(output_dir)
        if path is None:
            raise ValueError(
                f"--resume_from_checkpoint asks for the last checkpoint, but --output_dir={output_dir!r} holds no "
                "complete checkpoint-N folder; drop the flag to start from scratch or pass a checkpoint folder."
            )
        return path
    if isinstance(value, str) and value.strip().lower() in _NONE:
        return None
    if not isinstance(value, str):
        raise TypeError(f"--resume_from_checkpoint must be a folder, 'last' or a boolean, got {type(value).__name__}.")
    problem = checkpoint_problem(value)
    if problem is not None:
        raise ValueError(
            f"--resume_from_checkpoint={value!r} cannot be used: {problem}. Pass a complete checkpoint-N folder, "
            "or 'last' for the newest complete one in --output_dir."
        )
    return value
