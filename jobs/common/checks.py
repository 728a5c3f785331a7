"""Checks both jobs make before any model work (each raises a ValueError that names the option).

Preflight checks what the actor would otherwise fail on after Ray started and images were read
(issue 14), exactly as the actor will, from listings, small configs and the tokenizer only:
the model's weights files (diffseg.checkpoint.check_model_uri), the resolution against the model's
total downsampling, and the prompt built with the model's tokenizer (a class longer than one context).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from diffseg.eval.fitted import BACKGROUND_RANGE
from jobs.common.config import ConfigError

# The scale each method's background score lives on, so --tau / --fitted values outside it are refused:
# DiffSegmenter and SeeDiff threshold min-max-normalised scores in [0, 1]; MaskDiffusion a cosine.


def check_model(uri: str) -> None:
    """Raises ModelLoadError when `uri` is not a builtin model nor a diffusers checkpoint whose weights can
    be read (only pickle weights are refused); nothing is loaded."""
    from diffseg.model import check_model_uri

    check_model_uri(uri)


def check_model_setup(uri: str, vocab, resolution: int, mode: str = "joint", option: str = "--vocab",
                      separator: str | None = None) -> None:
    """Raises ConfigError (naming `option`) when the model named by `uri` (already checked by check_model)
    cannot run `vocab` at `resolution`: the resolution is not a multiple of its total downsampling
    (8 x 2^(levels-1) = 64 for SD), or the prompt does not build with its tokenizer (a class with its
    aliases, or the template around it, longer than one 77-token context). The prompt is built as a
    Segmenter builds it (``vocab.encode``): `vocab` with its templates, in `mode` ("joint"
    or "per_class"), classes joined by `separator` in a joint prompt (None: the vocabulary's default)."""
    from diffseg.checkpoint import downsampling, load_tokenizer

    step = downsampling(uri)
    if resolution % step:
        lower, upper = max(step, resolution // step * step), (resolution // step + 1) * step
        raise ConfigError(
            f"--resolution {resolution}: must be a multiple of {step}, the model's total downsampling (VAE x U-Net "
            f"levels: 8 x 2^(levels-1) for Stable Diffusion); e.g. {lower} or {upper}"
        )
    try:
        vocab.encode(load_tokenizer(uri), mode, **({} if separator is None else {"separator": separator}))
    except ValueError as exc:
        raise ConfigError(f"{option}: {exc}") from exc


def check_background(values: Mapping[str, Mapping], option: str = "--tau") -> None:
    """Raises ConfigError when a background threshold ({method: {"tau": x}}, as
    diffseg.eval.fitted.background_values returns) is not finite or lies outside its method's scale."""
    for method, params in values.items():
        tau = params.get("tau")
        low, high = BACKGROUND_RANGE.get(method, (-math.inf, math.inf))
        if tau is None:
            continue
        if not math.isfinite(tau) or not low <= tau <= high:
            raise ConfigError(f"{option} {tau!r}: must be a finite number in [{low:g}, {high:g}] for method {method} "
                              f"(its background score's scale)")


def load_vocabulary(option: str, spec: str):
    """The Vocabulary of `spec`; ConfigError naming `option` when it cannot be read."""
    from diffseg import Vocabulary
    from diffseg.redact import redact_text

    try:
        return Vocabulary.from_spec(spec)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{option} {redact_text(spec)!r}: {redact_text(str(exc), [spec])}") from exc


def writable_store(output: str):
    """The OutputStore of OUTPUT, once it proved writable (OutputError otherwise)."""
    from diffseg.lake.store import OutputStore

    store = OutputStore(output)
    store.check_writable()
    return store


def check_output_visible(store, config, nodes: int) -> None:
    """ConfigError when OUTPUT is a local path on a cluster of several nodes (the workers write their rows
    there: other nodes would write to their own disks) unless ``--shared-output`` says every node sees it."""
    from diffseg.model import redact_uri

    if store.local and nodes > 1 and not config.shared_output:
        raise ConfigError(
            f"OUTPUT {redact_uri(config.output)!r} is a local path but the cluster has {nodes} alive nodes: the "
            f"workers write their rows to OUTPUT, and other nodes cannot see this node's disk. Use an object store "
            f"(s3://, gs://) or pass --shared-output if the path is shared by every node (NFS)"
        )
