"""`argparse` types shared by the `scripts/bench_*.py` command lines: each checks one value when the command line is
parsed, so a bad value is refused by argparse, naming the flag, before any work."""

from __future__ import annotations

import argparse
import os


def int_at_least(minimum: int):
    """An argparse `type`: an integer >= `minimum`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value

    return parse


def output_file(text: str) -> str:
    """An argparse `type`: a file path whose folder exists and is writable (a missing folder used to fail only once
    the whole benchmark had run)."""
    folder = os.path.dirname(os.path.abspath(text)) if text else ""
    if not text or os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"must be a file path, got {text!r}")
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK | os.X_OK):
        raise argparse.ArgumentTypeError(f"{text!r}: its folder {folder!r} does not exist or is not writable")
    return text
