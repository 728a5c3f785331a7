"""argparse types shared by the command lines (``python -m diffseg`` and the jobs): a bad value is a
usage error (exit 2) naming the value and the rule, never a traceback or a silent hang."""

from __future__ import annotations

import argparse
import math


def positive_int(text: str) -> int:
    """A whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a whole number >= 1")
    return value


def finite_float(text: str) -> float:
    """A number that is not nan or infinite."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a finite number (not nan or inf)")
    return value


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number > 0")
    return value


def timesteps_option(text: str) -> tuple[int, ...]:
    """argparse type of ``--timesteps``: comma-separated whole numbers >= 0 ("100" or "20,100,200")."""
    try:
        values = tuple(int(t) for t in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be comma-separated whole numbers >= 0, e.g. 100 or 50,150")
    return values
