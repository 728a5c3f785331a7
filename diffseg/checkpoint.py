"""A diffusers Stable Diffusion checkpoint as files: listing, checks, preflight facts and the node cache.

- :func:`list_checkpoint`: ONE listing of a checkpoint (local folder or fsspec URL): every file's size
  and version (ETag on object stores, modification time elsewhere).
- :func:`check_model_uri` / :func:`check_weights`: listings only, nothing loaded: is it a checkpoint,
  and does every weighted component (unet, vae, text_encoder) have ``.safetensors`` weights (pickle
  files can run code when loaded, so they are read only when the caller allows it).
- :func:`downsampling` / :func:`load_tokenizer`: what a preflight needs to check a resolution and build
  a prompt exactly as the model will (small JSON configs and the tokenizer files; no weights).
- :func:`fetch_and_load`: remote checkpoints are cached per node under ``$DIFFSEG_CACHE`` (default
  ``~/.cache/diffseg``) in ``models/<uri key>-<listing key>/``. The listing key hashes the size and
  version of every file loading reads, so a checkpoint fixed in place at the same URI is fetched again.
  A download is marked ``.complete`` only once its files have loaded; other versions of the same URI
  are removed then. When the URI cannot be listed (store unreachable, or the checkpoint removed), the
  newest complete copy of it on the node is used, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from diffseg.redact import describe_error, redact_uri

BUILTIN_MODELS = ("tiny", "sd15-random", "sd21-random")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WEIGHTED = ("unet", "vae", "text_encoder")  # components whose weights loading reads
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
BUILTIN_DOWNSAMPLING = 64  # every builtin keeps SD's VAE x8 and 4 U-Net levels: 8 x 2^3

log = logging.getLogger("diffseg.checkpoint")


class ModelLoadError(ValueError):
    """The model URI does not name a usable diffusers Stable Diffusion checkpoint."""


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _root(uri: str):
    """(fs, root path without trailing slash) of a checkpoint URI (one exact object: no '::' chaining)."""
    from diffseg.inputs.uri import exact_fs

    fs, root = exact_fs(os.path.expanduser(uri) if is_local(uri) else uri)
    return fs, root.rstrip("/")


def list_checkpoint(uri: str) -> dict[str, dict]:
    """Relative path -> ``{"size": int, "version": str}`` of every file under the checkpoint `uri`, from
    one listing (``version``: the ETag on object stores, else the modification time). Raises OSError."""
    fs, root = _root(uri)
    listing = {}
    for path, info in fs.find(root, detail=True).items():
        if info.get("type") == "directory":
            continue
        version = info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or ""
        listing[path[len(root) + 1:]] = {"size": int(info.get("size") or 0), "version": str(version)}
    return listing


def check_files(files: Iterable[str], uri: str, allow_pickle: bool = False) -> None:
    """Raises ModelLoadError naming `uri` and what is missing when the relative paths `files` are not a
    diffusers SD checkpoint, or when a weighted component has no weights loading would read."""
    files = set(files)
    check_layout(files, uri)
    check_weights(files, uri, allow_pickle)


def check_checkpoint_folder(folder: Path, uri: str) -> None:
    """check_layout of a local `folder` (its files; weights are not looked at)."""
    check_layout([p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file()], uri)


def check_layout(files: Iterable[str], uri: str) -> None:
    """Raises ModelLoadError naming `uri` and what is missing when the relative paths `files` lack
    model_index.json or one of the five component folders."""
    files = set(files)
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    missing = [c for c in COMPONENTS if c not in tops]
    if "model_index.json" not in files:
        missing.insert(0, "model_index.json")
    if missing:
        raise ModelLoadError(
            f"model {redact_uri(uri)!r} is not a diffusers Stable Diffusion checkpoint: missing {', '.join(missing)} "
            f"(expected model_index.json, {', '.join(COMPONENTS)})"
        )


def check_weights(files: Iterable[str], uri: str, allow_pickle: bool = False) -> None:
    """Raises ModelLoadError when a weighted component (unet, vae, text_encoder) has no ``.safetensors``
    file among `files` (relative paths), or no weights at all; pickle weights count only with `allow_pickle`."""
    files = list(files)
    for comp in WEIGHTED:
        names = [f for f in files if f.startswith(comp + "/")]
        if any(n.endswith(".safetensors") for n in names):
            continue
        pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
        if pickles and allow_pickle:
            continue
        if pickles:
            raise ModelLoadError(
                f"model {redact_uri(uri)!r}: {comp}/ has only pickle weights ({', '.join(sorted(pickles))}); pickle files "
                "can run code when loaded, so only .safetensors weights are read. Convert the checkpoint (load it "
                "with diffusers and save_pretrained(folder, safe_serialization=True)) or pass allow_pickle=True"
            )
        raise ModelLoadError(f"model {redact_uri(uri)!r}: {comp}/ holds no weights (.safetensors)")


def check_model_uri(uri: str, allow_pickle: bool = False) -> None:
    """Raises ModelLoadError unless `uri` is a builtin model or names a diffusers SD checkpoint whose
    weights can be read. Reads only a listing (no weights, no download), so a job can check its model
    before reading images."""
    if uri in BUILTIN_MODELS:
        return
    if is_local(uri) and not Path(uri.removeprefix("file://")).expanduser().is_dir():
        raise ModelLoadError(
            f"model {uri!r}: no such folder. Pass one of {', '.join(BUILTIN_MODELS)}, a local folder or an "
            "fsspec URL (s3://bucket/prefix/) of a diffusers-format Stable Diffusion checkpoint"
        )
    try:
        listing = list_checkpoint(uri)
    except Exception as exc:
        raise ModelLoadError(f"model {redact_uri(uri)!r} cannot be listed: {describe_error(exc, [uri])}") from exc
    check_files(listing, uri, allow_pickle)


def read_json(uri: str, rel: str) -> dict:
    """The JSON file `rel` of the checkpoint `uri` (a small config; ModelLoadError when unreadable)."""
    fs, root = _root(uri)
    try:
        with fs.open(f"{root}/{rel}", "rb") as f:
            return json.loads(f.read())
    except Exception as exc:
        raise ModelLoadError(f"model {redact_uri(uri)!r}: cannot read {rel}: {describe_error(exc, [uri])}") from exc


def downsampling(uri: str) -> int:
    """Total downsampling of the model (image side / smallest U-Net grid side): the VAE's
    2^(levels-1) times the U-Net's 2^(levels-1); 8 x 8 = 64 for every SD 1.x/2.x. Reads two configs."""
    if uri in BUILTIN_MODELS:
        return BUILTIN_DOWNSAMPLING
    vae = read_json(uri, "vae/config.json").get("block_out_channels", [0] * 4)
    unet = read_json(uri, "unet/config.json").get("block_out_channels", [0] * 4)
    return 2 ** (len(vae) - 1) * 2 ** (len(unet) - 1)


def load_tokenizer(uri: str):
    """The model's tokenizer (the builtins' generated CLIP BPE, or the checkpoint's ``tokenizer/``)."""
    from transformers import CLIPTokenizer

    if uri in BUILTIN_MODELS:
        from diffseg.tokenizer import build_tiny_tokenizer

        return build_tiny_tokenizer()
    fs, root = _root(uri)
    try:
        if is_local(uri):
            return CLIPTokenizer.from_pretrained(f"{root}/tokenizer")
        with tempfile.TemporaryDirectory(prefix="diffseg-tokenizer-") as tmp:
            for path in fs.find(f"{root}/tokenizer"):
                fs.get(path, os.path.join(tmp, path.rsplit("/", 1)[-1]))
            return CLIPTokenizer.from_pretrained(tmp)
    except Exception as exc:
        raise ModelLoadError(f"model {redact_uri(uri)!r}: its tokenizer cannot be loaded: {describe_error(exc, [uri])}") from exc


def select_checkpoint_files(paths: list[str], allow_pickle: bool = False) -> list[str]:
    """The files of a diffusers checkpoint (paths relative to its root) that loading reads.

    model_index.json and the five component folders only; weight variants (``name.fp16.safetensors``)
    are skipped when the plain file exists; pickle weights (.bin/.pt/.ckpt) only with `allow_pickle`.
    """
    chosen = []
    present = set(paths)
    for rel in sorted(paths):
        top = rel.split("/", 1)[0]
        if rel != "model_index.json" and (top not in COMPONENTS or "/" not in rel):
            continue
        name = rel.rsplit("/", 1)[-1]
        if name.endswith(PICKLE_SUFFIXES) and not allow_pickle:
            continue
        parts = name.split(".")
        if len(parts) >= 3 and parts[-1] in ("safetensors", "bin"):  # name.variant.ext
            plain = rel.rsplit("/", 1)[0] + "/" + ".".join(parts[:-2] + parts[-1:])
            if plain in present:
                continue
        chosen.append(rel)
    return chosen


def cache_key(uri: str, listing: dict[str, dict], allow_pickle: bool = False) -> str:
    """``<uri key>-<listing key>``: the listing key hashes size and version of every file loading reads."""
    files = select_checkpoint_files(list(listing), allow_pickle)
    versions = [[rel, listing[rel]["size"], listing[rel]["version"]] for rel in files]
    return f"{_uri_key(uri, allow_pickle)}-{hashlib.sha256(json.dumps(versions).encode()).hexdigest()[:12]}"


def _uri_key(uri: str, allow_pickle: bool) -> str:
    return hashlib.sha256((uri.rstrip("/") + ("#pickle" if allow_pickle else "")).encode()).hexdigest()[:16]


def fetch_and_load(uri: str, load: Callable[[Path], object], cache_dir: str | None = None,
                   allow_pickle: bool = False):
    """``load(folder)`` of the checkpoint `uri`: a local folder as is; a remote one from the node cache,
    downloading it first when the cache has no complete copy of its current files (see the module
    docstring). Several processes on a node download once (a file lock per URI)."""
    from filelock import FileLock

    if is_local(uri):
        check_model_uri(uri, allow_pickle)
        return load(Path(uri.removeprefix("file://")).expanduser())
    cache = Path(cache_dir or os.environ.get("DIFFSEG_CACHE", "~/.cache/diffseg")).expanduser() / "models"
    cache.mkdir(parents=True, exist_ok=True)
    prefix = _uri_key(uri, allow_pickle)
    with FileLock(str(cache / f"{prefix}.lock")):
        try:
            listing = list_checkpoint(uri)
            if not listing:
                raise FileNotFoundError(f"no file under {redact_uri(uri)}")
        except Exception as exc:  # unreachable, or removed: a complete copy on this node still serves
            cached = _newest_complete(cache, prefix)
            if cached is None:
                raise ModelLoadError(f"model {redact_uri(uri)!r} cannot be listed: {describe_error(exc, [uri])}") from exc
            log.warning("model %s cannot be listed (%s); using the copy cached on this node (%s)", redact_uri(uri),
                        describe_error(exc, [uri]), cached.name)
            return load(cached)
        check_files(listing, uri, allow_pickle)
        final = cache / cache_key(uri, listing, allow_pickle)
        if (final / ".complete").exists():
            return load(final)
        tmp = cache / f"{final.name}.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        _download(uri, select_checkpoint_files(list(listing), allow_pickle), tmp)
        try:
            loaded = load(tmp)  # only files that load are ever marked complete
        except Exception:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        (tmp / ".complete").write_text("ok")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in cache.glob(f"{prefix}-*"):
            if old.is_dir() and old != final:
                shutil.rmtree(old, ignore_errors=True)  # an older version of the same URI
    return loaded


def _download(uri: str, files: list[str], dest: Path) -> None:
    fs, root = _root(uri)
    try:
        for rel in files:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get(f"{root}/{rel}", str(dest / rel))
    except Exception as exc:  # network, permissions, missing bucket
        shutil.rmtree(dest, ignore_errors=True)
        raise ModelLoadError(f"model {redact_uri(uri)!r} could not be downloaded: {describe_error(exc, [uri])}") from exc


def _newest_complete(cache: Path, prefix: str) -> Path | None:
    done = [p for p in cache.glob(f"{prefix}-*") if (p / ".complete").exists() and not p.name.endswith(".partial")]
    return max(done, key=lambda p: (p / ".complete").stat().st_mtime, default=None)
