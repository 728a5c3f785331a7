"""``jobs.synthesize``'s configuration, its work items and how they are cut into units and batches.

A work item is one (class, seed), keyed ``"class\\tseed"`` (class names never hold a tab: the
vocabulary collapses white space). Units and generation batches are fixed by the items alone, never
by what a previous run already committed or by how Ray schedules:

- a **unit** (the grain of exactly-once and resume) is the requested seeds of one class that fall in
  one block ``seed // unit_size``;
- a **generation group** (one ``generate_with_masks`` call) is the unit's seeds in one block
  ``seed // batch_size``.

So a run that is killed and resumed generates every remaining item in the same group, with the same
batch neighbours, as an uninterrupted run would: images are bit-identical either way (batched kernels
can change a pixel by one level when the batch composition changes, so the composition is kept fixed).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from diffseg.lake.units import Unit, unit_id_of
from jobs.common.config import RunOptions, check_options


@dataclass(frozen=True)
class SynthConfig(RunOptions):
    """Everything `python -m jobs.synthesize` was asked to do (written, resolved, into manifest.json)."""

    output: str  # prefix that holds samples/, errors/, manifest.json
    classes: str  # class file path/URL (one per line) or "cat, dog, potted plant"
    per_class: int  # images per class: seeds seed .. seed + per_class - 1
    model: str  # "tiny", "sd15-random", a folder or an fsspec URL of a diffusers SD checkpoint
    prompt: str = "a photo of a {}"  # "{}" is replaced by the class name (SeeDiff's prompt)
    steps: int = 50  # DDIM steps (SeeDiff: 50)
    guidance: float = 7.0  # classifier-free guidance scale (SeeDiff's 7); 1 = no guidance
    resolution: int = 512  # image side in pixels (square)
    seed: int = 0  # first seed of every class
    pamr: bool = False  # refine masks on the image with PAMR (SeeDiff's optional step; threshold 0.8 then)
    batch_size: int = field(default=4, kw_only=True)  # items of one class per generation call (per actor)
    unit_size: int = field(default=64, kw_only=True)  # seeds of one class per work unit (one file per table and unit)

    def __post_init__(self):
        check_options([
            (self.per_class >= 1, "--per-class", self.per_class, "at least 1"),
            ("{}" in self.prompt, "--prompt", self.prompt, "a template with '{}' where the class name goes"),
            (self.steps >= 1, "--steps", self.steps, "at least 1"),
            (self.guidance >= 1.0, "--guidance", self.guidance, ">= 1 (1 = no classifier-free guidance)"),
            (self.resolution >= 64 and self.resolution % 64 == 0, "--resolution", self.resolution,
             "a multiple of 64 (the VAE downsamples by 8 and the U-Net by 8 more)"),
            *self.checks(),
        ])

    @property
    def seeds(self) -> range:
        return range(self.seed, self.seed + self.per_class)


def item_key(class_name: str, seed: int) -> str:
    return f"{class_name}\t{int(seed)}"


def parse_key(key: str) -> tuple[str, int]:
    """``"potted plant\\t7"`` -> ``("potted plant", 7)``."""
    class_name, seed = key.rsplit("\t", 1)
    return class_name, int(seed)


def all_keys(class_names: list[str], seeds) -> list[str]:
    return [item_key(c, s) for c in class_names for s in seeds]


def make_synth_units(class_names: list[str], seeds, unit_size: int, done: set[str] = frozenset()) -> list[Unit]:
    """The units of the items not in `done`: per class (vocabulary order), the seeds of each block
    ``seed // unit_size`` (ascending). A unit's keys are sorted, its id is ``unit_id_of(keys)``."""
    if unit_size < 1:
        raise ValueError(f"unit size must be at least 1, got {unit_size}")
    units = []
    for class_name in class_names:
        blocks: dict[int, list[str]] = defaultdict(list)
        for seed in seeds:
            key = item_key(class_name, seed)
            if key not in done:
                blocks[seed // unit_size].append(key)
        for block in sorted(blocks):
            keys = tuple(sorted(blocks[block]))
            units.append(Unit(unit_id_of(keys), keys))
    return units


def generation_groups(unit: Unit, batch_size: int) -> list[tuple[str, list[int]]]:
    """A unit's items as generation calls: [(class name, ascending seeds)], one per block
    ``seed // batch_size`` (a unit holds one class)."""
    by_block: dict[tuple[str, int], list[int]] = defaultdict(list)
    for key in unit.uris:
        class_name, seed = parse_key(key)
        by_block[(class_name, seed // batch_size)].append(seed)
    return [(c, sorted(seeds)) for (c, _), seeds in sorted(by_block.items(), key=lambda kv: (kv[0][1], kv[0][0]))]
