"""Checks both jobs make before any model work (each raises a ValueError that names the option)."""

from __future__ import annotations

from jobs.common.config import ConfigError


def check_model(uri: str) -> None:
    """Raises ModelLoadError when `uri` is not a builtin model nor a diffusers checkpoint (nothing is loaded)."""
    from diffseg.model import check_model_uri

    check_model_uri(uri)


def load_vocabulary(option: str, spec: str):
    """The Vocabulary of `spec`; ConfigError naming `option` when it cannot be read."""
    from diffseg import Vocabulary

    try:
        return Vocabulary.from_spec(spec)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"{option} {spec!r}: {exc}") from exc


def writable_store(output: str):
    """The OutputStore of OUTPUT, once it proved writable (OutputError otherwise)."""
    from diffseg.lake.store import OutputStore

    store = OutputStore(output)
    store.check_writable()
    return store
