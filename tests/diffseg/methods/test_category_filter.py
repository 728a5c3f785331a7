"""The category filter does not depend on where a class sits in the vocabulary (issue 11 item 7).

Planted attention in which each 77-token chunk shares its softmax with its own start token, template,
separators and end/pad tokens: a class in the later, shorter chunk shares it with many more pad columns,
so its raw attention is lower for its position alone. The evidence the filter reads (each class's map
relative to its chunk's start token) is the same wherever the class stands.
"""

import math
import random

import torch

from diffseg.capture import CapturedMaps
from diffseg.methods import get
from diffseg.methods.common import (
    chunk_starts,
    evidence_maps,
    relative_evidence_keep,
    span_maps,
    top_fraction_mean,
)
from diffseg.methods.diffsegmenter import DiffSegmenterParams
from diffseg.vocabulary import Vocabulary, context_length

NAMES = ["cat", "dog", "car", "tree", "sky", "road", "bird", "boat", "bus", "chair", "cow", "horse", "sheep",
         "train", "bottle", "person", "sofa", "table", "plant", "monitor", "bike", "house", "wall", "floor",
         "grass", "water", "window", "door", "lamp", "book", "cup", "bed", "desk", "shoe"]  # fmt: skip
SIDE = 16
STRONG, WEAK = "cat", "dog"  # the only classes present: cat on the left half, dog in the lower right


def class_logits(name: str) -> torch.Tensor:
    """(SIDE*SIDE,) logits of a class's tokens: they depend on the class only, never on its position."""
    grid = torch.zeros(SIDE, SIDE)
    if name == STRONG:
        grid[:, : SIDE // 2] = 3.0
    if name == WEAK:
        grid[SIDE // 2 :, SIDE // 2 :] = 1.4
    return grid.flatten()


def planted_attention(names: list[str], tokenizer) -> tuple[torch.Tensor, list[list[int]]]:
    """(1, SIDE*SIDE, T) attention of the joint context of `names`, and the class spans."""
    prompt = Vocabulary(names).encode(tokenizer, "joint")
    ids, spans, chunk = prompt.input_ids[0], prompt.spans[0], context_length(tokenizer)
    logits = torch.zeros(SIDE * SIDE, ids.numel())  # template words and separators: 0
    logits[:, ids == tokenizer.eos_token_id] = 1.5  # end and pad columns (the pad is the end token here)
    logits[:, ids == tokenizer.pad_token_id] = 1.5
    logits[:, ids == tokenizer.bos_token_id] = 4.0  # each chunk's start token: the sink
    for name, span in zip(names, spans):
        logits[:, span] = class_logits(name)[:, None]
    chunks = logits.view(SIDE * SIDE, -1, chunk)  # one softmax per chunk, chunks share the mass
    attention = torch.softmax(chunks, -1) / chunks.shape[1]
    return attention.reshape(1, SIDE * SIDE, -1), spans


def orders(seed: int = 0, count: int = 8) -> list[list[str]]:
    """Permutations of NAMES, including the two extremes: the weak class first or last."""
    rng = random.Random(seed)
    out = [[WEAK, *[n for n in NAMES if n != WEAK]], [*[n for n in NAMES if n != WEAK], WEAK]]
    for _ in range(count):
        out.append(rng.sample(NAMES, len(NAMES)))
    return out


def kept_by_name(evidence: torch.Tensor, names: list[str], ratio: float = 0.2) -> set[str]:
    keep = relative_evidence_keep(top_fraction_mean(evidence, 0.02), ratio)[0]
    return {n for n, k in zip(names, keep.tolist()) if k}


def test_the_planted_context_has_two_chunks_and_the_weak_class_visits_both(tiny_pipe):
    chunk = context_length(tiny_pipe.tokenizer)
    visited = set()
    for names in orders():
        attention, spans = planted_attention(names, tiny_pipe.tokenizer)
        assert attention.shape[-1] == 2 * chunk and torch.allclose(attention.sum(-1), torch.ones(1))
        visited.add(spans[names.index(WEAK)][0] // chunk)
    assert visited == {0, 1}


def test_evidence_and_the_kept_set_are_the_same_under_any_permutation(tiny_pipe):
    reference = None
    raw_kept = []
    for names in orders():
        attention, spans = planted_attention(names, tiny_pipe.tokenizer)
        evidence = top_fraction_mean(evidence_maps(attention, spans), 0.02)[0]
        by_name = dict(zip(names, evidence.tolist()))
        if reference is None:
            reference = by_name
        assert all(math.isclose(by_name[n], reference[n], rel_tol=1e-5) for n in NAMES)
        assert kept_by_name(evidence_maps(attention, spans), names) == {STRONG, WEAK}
        raw_kept.append(frozenset(kept_by_name(span_maps(attention, spans), names)))
    assert len(set(raw_kept)) > 1  # the raw attention (the old evidence) kept the weak class by position


def test_diffsegmenter_keeps_the_same_classes_wherever_they_stand(tiny_pipe):
    for names in orders(seed=1, count=4):
        attention, spans = planted_attention(names, tiny_pipe.tokenizer)
        maps = CapturedMaps(cross={SIDE: attention})
        scores = get("diffsegmenter")(maps, spans, DiffSegmenterParams(propagate=False))
        kept = {n for n, channel in zip(names, scores[0, 1:]) if torch.isfinite(channel).all()}
        assert kept == {STRONG, WEAK}, names


def test_an_axis_without_start_tokens_keeps_the_raw_maps():
    merged = [[0], [1, 2], [3]]  # the per-class capture merged to class columns: no start tokens
    assert chunk_starts(4, merged, 77) is None
    assert chunk_starts(154, [[5], [80, 81]], 77) == [0, 77]
    assert chunk_starts(150, [[5]], 77) is None  # not whole chunks
    attention = torch.rand(1, 4, 4)
    assert torch.equal(evidence_maps(attention, merged), span_maps(attention, merged))
