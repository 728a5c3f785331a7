"""Class names, prompts, and the exact token positions of every class in the encoded text context.

Prompt rules (DESIGN.md "Prompts"):

- ``joint`` mode (default): one context for the whole vocabulary, ``"a photograph of {classes}"`` with
  the classes (each followed by its aliases) joined by ``", "``. A class never straddles a 77-token
  chunk: chunks are filled greedily by whole classes, each chunk repeats the template's text around
  ``{classes}``, is wrapped in start/end tokens and padded to the tokenizer's length (as SD pads), and
  the chunks are concatenated along the sequence. The U-Net's cross-attention accepts any length.
- ``per_class`` mode (the DiffSegmenter paper's protocol): one context per class,
  ``"a photograph of a {class}"``.
- A class's span is every token of its name and of its aliases (multi-token names use all their tokens;
  nothing assumes one token per word). Positions are found by tokenizing each piece on its own: CLIP's
  BPE never merges across words or punctuation, so the pieces concatenate to the whole prompt's tokens.
- Class-token up-weighting as Compel does it (the paper's "++"): on the class tokens only,
  ``z' = z_empty + w (z - z_empty)``, z_empty the encoding of the empty prompt at the same position
  in its chunk. Scaling z itself would also scale CLIP's large component shared by every token.
  Default w (:data:`CLASS_TOKEN_WEIGHT`): 1.21 (= 1.1^2, Compel's "++") in ``per_class`` mode, the
  paper's protocol; 1.0 (none) in ``joint`` mode.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DEFAULT_TEMPLATE = "a photograph of {classes}"  # joint context (DESIGN.md)
DEFAULT_CLASS_TEMPLATE = "a photograph of a {class}"  # per-class context (DiffSegmenter paper)
SEPARATOR = ", "
CLASS_TOKEN_WEIGHT = {"joint": 1.0, "per_class": 1.21}  # Compel's "++" (1.1^2) in the paper's per-class protocol
FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".lst", ".list", ".names")  # a spec ending so is a file


@dataclass(frozen=True)
class EncodedPrompt:
    """Token ids of one or more contexts and the token positions of each class.

    ``input_ids``: (P, L) int64, P prompts (1 in joint mode, K in per-class mode), L = chunks x 77.
    ``spans``: for joint mode one list of K spans (positions in the single prompt); for per-class mode
    K lists of one span each (the position of class k inside prompt k).
    """

    input_ids: torch.Tensor
    spans: list[list[list[int]]]


class Vocabulary:
    """An ordered list of classes (1-based ids in label maps; 0 is background), with optional aliases."""

    def __init__(
        self,
        names: Sequence[str],
        aliases: dict[str, Sequence[str]] | None = None,
        template: str = DEFAULT_TEMPLATE,
        class_template: str = DEFAULT_CLASS_TEMPLATE,
    ):
        cleaned = [normalize_name(n) for n in names]
        cleaned = [n for n in cleaned if n]
        if not cleaned:
            raise ValueError("the vocabulary is empty: pass at least one class name, e.g. 'person, car, road'")
        check_unique(cleaned, "class names")
        if "{classes}" not in template:
            raise ValueError(f"template {template!r} must contain '{{classes}}'")
        if "{class}" not in class_template:
            raise ValueError(f"class_template {class_template!r} must contain '{{class}}'")
        aliases = {normalize_name(k): v for k, v in (aliases or {}).items()}
        unknown = sorted(set(aliases) - set(cleaned))
        if unknown:
            raise ValueError(f"aliases given for classes not in the vocabulary: {', '.join(unknown)}")
        self.names: list[str] = cleaned
        self.aliases: dict[str, tuple[str, ...]] = {
            n: tuple(a for a in (normalize_name(x) for x in aliases.get(n, ())) if a) for n in cleaned
        }
        check_unique([*cleaned, *(a for n in cleaned for a in self.aliases[n])], "class names and aliases")
        self.template = template
        self.class_template = class_template

    def __len__(self) -> int:
        return len(self.names)

    def __repr__(self) -> str:
        return f"Vocabulary({self.names!r})"

    @classmethod
    def from_text(cls, text: str, **kwargs) -> Vocabulary:
        """One class per line, ``name`` or ``name: alias, alias``; blank lines and ``#`` comments ignored."""
        names, aliases = [], {}
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            name, _, rest = line.partition(":")
            names.append(name)
            if rest.strip():
                aliases[normalize_name(name)] = [a for a in rest.split(",")]
        return cls(names, aliases, **kwargs)

    @classmethod
    def from_file(cls, path: str, **kwargs) -> Vocabulary:
        """Reads a class file (see from_text) from a local path or any fsspec URL."""
        from diffseg.inputs.uri import open_exact
        from diffseg.redact import describe_error, redact_uri

        try:
            with open_exact(path) as f:
                text = f.read().decode("utf-8")
        except FileNotFoundError as exc:
            raise ValueError(f"vocabulary file {redact_uri(path)!r} does not exist") from exc
        except Exception as exc:  # permissions, network, a storage client's own errors, not UTF-8
            raise ValueError(f"vocabulary file {redact_uri(path)!r} cannot be read: {describe_error(exc, [path])}") from exc
        return cls.from_text(text, **kwargs)

    @classmethod
    def from_spec(cls, spec: str, **kwargs) -> Vocabulary:
        """A file path/URL (one class per line) when `spec` names one, a built-in benchmark vocabulary
        (``voc21``, ``context60``, ``coco_object``: diffseg.eval.benchmarks; a local file of that name
        wins), else a comma-separated list.

        A spec that looks like a path (:func:`looks_like_path`) but is no local file is refused
        (ValueError naming it): ``clases.txt`` is a typo, not a class."""
        check_spec(spec)
        if "://" in spec:
            return cls.from_file(spec, **kwargs)
        if os.path.isfile(os.path.expanduser(spec.strip())):
            return cls.from_file(os.path.expanduser(spec.strip()), **kwargs)
        if "," not in spec:  # a benchmark's vocabulary by name: voc21, context60, coco_object
            from diffseg.eval.benchmarks import builtin_vocabulary

            lines = builtin_vocabulary(spec.strip())
            if lines:
                return cls.from_text("\n".join(lines), **kwargs)
        return cls([s for s in spec.split(",")], **kwargs)

    def hash(self, model: str = "") -> str:
        """sha256 hex of the normalised classes (with aliases), both templates and `model`."""
        payload = {
            "classes": [[n, *self.aliases[n]] for n in self.names],
            "template": self.template,
            "class_template": self.class_template,
            "model": model,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def encode(self, tokenizer, mode: str = "joint", separator: str = SEPARATOR) -> EncodedPrompt:
        """Token ids and class spans for `mode` ("joint" or "per_class"), with `tokenizer` (CLIP BPE).

        `separator` joins the classes of a joint prompt (", " by default; MaskDiffusion's " and "); a
        class's aliases are always joined by ", "."""
        if mode == "joint":
            ids, spans = self._encode_joint(tokenizer, separator)
            return EncodedPrompt(torch.tensor([ids]), [spans])
        if mode == "per_class":
            rows, spans = [], []
            for name in self.names:
                pre, post = self.class_template.split("{class}", 1)
                chunks = build_chunks(tokenizer, pre, post, [self._class_items(name)], what=f"class {name!r}")
                if len(chunks) != 1:
                    raise ValueError(f"class {name!r} with its aliases does not fit one context")
                rows.append(chunks[0][0])
                spans.append([chunks[0][1][0]])
            return EncodedPrompt(torch.tensor(rows), spans)
        raise ValueError(f"context mode {mode!r} is not one of 'joint', 'per_class'")

    def _class_items(self, name: str) -> list[str]:
        return [name, *self.aliases[name]]

    def _encode_joint(self, tokenizer, separator: str = SEPARATOR) -> tuple[list[int], list[list[int]]]:
        pre, post = self.template.split("{classes}", 1)
        chunks = build_chunks(tokenizer, pre, post, [self._class_items(n) for n in self.names], what="vocabulary",
                              separator=separator)
        ids, spans = [], []
        for chunk_ids, chunk_spans in chunks:
            offset = len(ids)
            ids += chunk_ids
            spans += [[offset + p for p in span] for span in chunk_spans]
        return ids, spans


def looks_like_path(spec: str) -> bool:
    """True when a vocabulary spec without a comma reads as a file: it holds a ``/`` or ends with a
    file suffix (:data:`FILE_SUFFIXES`, any case)."""
    if "," in spec or "\n" in spec:
        return False
    return "/" in spec or spec.strip().lower().endswith(FILE_SUFFIXES)


def check_spec(spec: str) -> None:
    """Raises ValueError when `spec` looks like a local path (see looks_like_path) that is missing or a
    folder; URLs (``scheme://``) are checked when read."""
    if "://" in spec or not looks_like_path(spec):
        return
    path = os.path.expanduser(spec.strip())
    if os.path.isdir(path):
        raise ValueError(f"{spec!r} is a folder, not a class file (one class per line)")
    if not os.path.isfile(path):
        raise ValueError(
            f"{spec!r} looks like a file path but no such file exists; to use it as one class name, "
            f"end it with a comma ({spec.strip()!r},)"
        )


def check_unique(names: Sequence[str], what: str) -> None:
    """Raises ValueError naming the `names` that are equal ignoring case and white space (they encode to
    the same tokens: CLIP's tokenizer lower-cases)."""
    seen: dict[str, list[str]] = {}
    for n in names:
        seen.setdefault(normalize_name(n).casefold(), []).append(n)
    dupes = [group for group in seen.values() if len(group) > 1]
    if dupes:
        listed = "; ".join(" = ".join(group) for group in dupes)
        raise ValueError(f"{what} must be unique ignoring case and spaces; repeated: {listed}")


def normalize_name(name: str) -> str:
    """Strips and collapses white space (case is kept: it reaches the tokenizer, which lower-cases)."""
    return re.sub(r"\s+", " ", str(name)).strip()


def build_chunks(tokenizer, prefix: str, suffix: str, classes: list[list[str]], what: str,
                 separator: str = SEPARATOR):
    """Fills contexts greedily with whole classes; returns [(ids padded to max length, spans)].

    `classes`: per class, its name then aliases. Each chunk is
    ``<start> prefix name, alias<separator>name, alias ... suffix <end> <pad>...`` (aliases joined by
    ", ", classes by `separator`); a class's span is the positions of all its items' tokens in the chunk.
    """
    length = context_length(tokenizer)
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end

    def tok(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False).input_ids if text.strip() else []

    pre, post, sep, class_sep = tok(prefix), tok(suffix), tok(SEPARATOR), tok(separator)
    fixed = 2 + len(pre) + len(post)
    chunks: list[tuple[list[int], list[list[int]]]] = []
    body: list[int] = []
    spans: list[list[int]] = []

    def flush():
        ids = [start, *pre, *body, *post, end]
        chunks.append((ids + [pad] * (length - len(ids)), spans))

    for items in classes:
        piece: list[int] = []
        rel: list[int] = []
        for j, item in enumerate(items):
            if j:
                piece += sep
            item_ids = tok(item)
            if not item_ids:
                raise ValueError(f"{what}: {item!r} encodes to no tokens")
            rel += range(len(piece), len(piece) + len(item_ids))
            piece += item_ids
        if fixed + len(piece) > length:
            raise ValueError(f"{what}: {items[0]!r} with its aliases is longer than one {length}-token context")
        lead = class_sep if body else []
        if fixed + len(body) + len(lead) + len(piece) > length:
            flush()
            body, spans, lead = [], [], []
        base = 1 + len(pre) + len(body) + len(lead)
        spans = [*spans, [base + r for r in rel]]
        body = body + lead + piece
    flush()
    return chunks


@torch.no_grad()
def encode_text(text_encoder, input_ids: torch.Tensor, chunk: int, device, dtype) -> torch.Tensor:
    """(P, L) token ids -> (P, L, D) embeddings, encoding each `chunk`-token context separately."""
    p, length = input_ids.shape
    flat = input_ids.reshape(p * (length // chunk), chunk).to(device)
    hidden = text_encoder(flat)[0]
    return hidden.reshape(p, length, -1).to(dtype)


def context_length(tokenizer) -> int:
    """Tokens per context chunk: the tokenizer's model_max_length (77 for CLIP), 77 when it has none."""
    length = tokenizer.model_max_length
    return 77 if length is None or length > 10_000 else int(length)


def class_token_weight(mode: str, weight: float | None = None) -> float:
    """`weight` when given, else the default of context `mode` (:data:`CLASS_TOKEN_WEIGHT`)."""
    if weight is not None:
        return float(weight)
    if mode not in CLASS_TOKEN_WEIGHT:
        raise ValueError(f"context mode {mode!r} is not one of {', '.join(CLASS_TOKEN_WEIGHT)}")
    return CLASS_TOKEN_WEIGHT[mode]


def upweight_class_tokens(context: torch.Tensor, empty: torch.Tensor, spans: list[list[list[int]]],
                          weight: float) -> torch.Tensor:
    """Compel's up-weighting of the class tokens: ``z' = z_empty + weight * (z - z_empty)``.

    context: (P, L, D) encoded prompts (L = chunks x chunk length); empty: (chunk, D) the encoding of the
    empty prompt (start, end, padding) of one chunk, so position p compares with ``empty[p % chunk]``;
    spans: per prompt, its classes' token positions (:attr:`EncodedPrompt.spans`). Every other token is
    left as it is; ``weight = 1`` returns `context` unchanged. Returns (P, L, D) in context's dtype.
    """
    if weight == 1.0:
        return context
    out = context.clone()
    chunk = empty.shape[0]
    for row, row_spans in enumerate(spans):
        positions = torch.tensor(sorted({p for span in row_spans for p in span}), dtype=torch.long)
        z = context[row, positions].float()
        z0 = empty[positions % chunk].to(z.device, torch.float32)
        out[row, positions] = (z0 + weight * (z - z0)).to(context.dtype)
    return out


def empty_prompt_ids(tokenizer, length: int) -> torch.Tensor:
    """(1, length) token ids of the empty prompt: start, end, then padding (the tokenizer's pad token, its
    end token when it has none); what ``tokenizer("", padding="max_length", max_length=length)`` gives
    for CLIP's tokenizer."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer.bos_token_id, tokenizer.eos_token_id]
    return torch.tensor([ids + [pad] * (length - len(ids))])


@torch.no_grad()
def encode_context(text_encoder, tokenizer, prompt: EncodedPrompt, device, dtype,
                   weight: float = 1.0) -> torch.Tensor:
    """(P, L, D) text context of `prompt`, its class tokens up-weighted by `weight` as Compel does
    (:func:`upweight_class_tokens`; the empty prompt is encoded with the same tokenizer and encoder)."""
    chunk = context_length(tokenizer)
    context = encode_text(text_encoder, prompt.input_ids, chunk, device, torch.float32)
    if weight != 1.0:
        empty = encode_text(text_encoder, empty_prompt_ids(tokenizer, chunk), chunk, device, torch.float32)[0]
        context = upweight_class_tokens(context, empty, prompt.spans, weight)
    return context.to(dtype)
