"""A small CLIP BPE tokenizer generated offline (no model hub), for the tiny test/demo pipeline.

The vocabulary has CLIP's 256 byte-level symbols (with and without the end-of-word marker ``</w>``),
whole-word merges for a short list of common words, and CLIP's start/end tokens. Words outside the
list are split into several tokens, which is exactly what tests of multi-token class names need.
"""

from __future__ import annotations

import json
from pathlib import Path

# Words that become single tokens. Anything else ("potted", "monitor", ...) is split into pieces.
COMMON_WORDS = (
    "a an the of and photo photograph picture in on with background "
    "person people man woman car bus road tree sky cat dog bird plant tv grass building "
    "water street table chair house horse"
).split()

START, END = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable unicode character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab_and_merges(words: tuple[str, ...] = COMMON_WORDS) -> tuple[dict[str, int], list[str]]:
    """Returns (vocab: token -> id, merges: list of "a b" lines in priority order)."""
    symbols = list(bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols]
    merges: list[str] = []
    seen = set(tokens)
    for word in words:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        current = pieces[0]
        for nxt in pieces[1:]:
            merged = current + nxt
            line = f"{current} {nxt}"
            if merged not in seen:
                merges.append(line)
                tokens.append(merged)
                seen.add(merged)
            current = merged
    tokens += [START, END]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_tiny_tokenizer(folder: str | Path) -> Path:
    """Writes vocab.json and merges.txt (CLIP format) into `folder`; returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = build_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return folder


def build_tiny_tokenizer(model_max_length: int = 77):
    """A transformers CLIPTokenizer over the generated vocabulary (no files, no network)."""
    from transformers import CLIPTokenizer

    vocab, merges = build_vocab_and_merges()
    try:
        return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    except TypeError:  # transformers 4.x takes files, not objects
        import tempfile

        with tempfile.TemporaryDirectory(prefix="diffseg-tok-") as tmp:  # read whole by the constructor
            folder = write_tiny_tokenizer(tmp)
            return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                                 model_max_length=model_max_length)
