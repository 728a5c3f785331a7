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


# The name the running command was called by ("diffseg segment"), set by the `diffseg` console script
# (jobs.cli) around the command's main; None: each parser's own prog ("python -m jobs.segment").
_called_as: str | None = None


def set_called_as(name: str | None) -> str | None:
    """Makes parsers built from now on name themselves `name` in usage lines, --help and errors
    (``diffseg segment`` when the console script runs the command); returns the previous name."""
    global _called_as
    previous, _called_as = _called_as, name
    return previous


class CommandParser(argparse.ArgumentParser):
    """The commands' ArgumentParser: usage lines name the command as it was called (see set_called_as:
    example lines of its description and epilog that start with ``python -m jobs.segment`` start with
    ``diffseg segment`` too), and an
    option that does not exist is answered with the nearest one (``--fromat`` -> "did you mean
    --format?") before argparse would complain about a missing required option instead."""

    def __init__(self, *args, **kwargs):
        prog = kwargs.get("prog")
        if _called_as and prog:
            import re

            kwargs["prog"] = _called_as
            # example lines that start with the command; not `ray job submit -- python -m jobs.segment`,
            # where the cluster runs the uploaded checkout's module, not an installed script
            start = re.compile(rf"(?m)^(\s*){re.escape(prog)}\b")
            for key in ("description", "epilog"):
                if kwargs.get(key):
                    kwargs[key] = start.sub(lambda m: m.group(1) + _called_as, kwargs[key])
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):
        import sys

        argv = list(sys.argv[1:] if args is None else args)
        self.check_option_names(argv)
        return super().parse_known_args(argv, namespace)

    def check_option_names(self, argv: list[str]) -> None:
        """Exits 2 naming the first ``--option`` of `argv` that is neither an option of this parser nor a
        unique prefix of one, with the closest option names when there are any."""
        import difflib

        known = [s for s in self._option_string_actions if s.startswith("--")]
        for token in argv:
            if token == "--":
                return
            if not token.startswith("--") or len(token) < 3:
                continue
            name = token.split("=", 1)[0]
            if name in self._option_string_actions:
                continue
            prefixed = [s for s in known if s.startswith(name)]
            if len(prefixed) == 1 and self.allow_abbrev:
                continue  # argparse's own abbreviation (--meth for --method)
            near = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
            if len(prefixed) > 1:
                near = prefixed
            hint = f": did you mean {' or '.join(near)}?" if near else f" ({self.prog} --help lists the options)"
            self.error(f"unrecognized option {name}{hint}")
