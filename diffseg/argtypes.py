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


def add_recipe_options(parser) -> None:
    """The recipe options (``--context``, ``--timesteps``, ``--template``, ``--separator``,
    ``--class-token-weight``) on `parser` (a parser or an argument group); those not given stay None and
    are left to the methods' recipe (diffseg.segmenter.RECIPES). Read them back with :func:`recipe_kwargs`."""
    parser.add_argument("--context", choices=("joint", "per_class"), default="joint",
                        help="one prompt for the whole vocabulary (default) or one per class (the paper's protocol)")
    parser.add_argument("--timesteps", type=timesteps_option, default=None, metavar="T[,T...]",
                        help="U-Net timesteps, one forward each, maps averaged (e.g. 100 or 20,100,200; default: the "
                        "recipe's)")
    parser.add_argument("--template", default=None,
                        help="prompt template with {classes} (joint) or {class} (per_class), e.g. 'a photo of "
                        "{classes}' (default: the recipe's)")
    parser.add_argument("--separator", default=None,
                        help="between classes in a joint prompt, e.g. ' and ' (default: the recipe's)")
    parser.add_argument("--class-token-weight", type=finite_float, default=None, metavar="W",
                        help="Compel up-weighting of class tokens (default: 1.21 per_class, 1.0 joint)")


def recipe_kwargs(context: str, timesteps=None, template: str | None = None, separator: str | None = None,
                  class_token_weight: float | None = None) -> dict:
    """The Segmenter keyword options of the recipe options given (``context`` always; the others only when
    not None: those left out are the methods' recipe, diffseg.segmenter.RECIPES)."""
    given = {"timesteps": timesteps, "template": template, "separator": separator,
             "class_token_weight": class_token_weight}
    return {"context": context, **{k: v for k, v in given.items() if v is not None}}
