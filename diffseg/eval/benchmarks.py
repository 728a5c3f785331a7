"""Built-in benchmarks: the papers' three datasets' ground-truth ids, names and prompt vocabularies.

``jobs.evaluate --class-map voc21`` and ``jobs.segment --vocab voc21`` use these, so that evaluating on a
standard dataset needs no hand-written class map. Each benchmark is a list of classes in ground-truth id
order (position = id in the label PNGs of the standard preprocessed dataset; 0 is background, 255 is
ignore) with the name the prompt uses and its aliases (extra words in the class's token span).

- ``voc21``: PASCAL VOC 2012 ``SegmentationClass`` PNGs, background + 20 (ids and order of
  mmsegmentation ``mmseg/datasets/voc.py`` PascalVOCDataset; 15 = person).
- ``context60``: PASCAL Context, 59 classes + background, as mmsegmentation's ``PascalContextDataset``
  (``mmseg/datasets/pascal_context.py``, ``reduce_zero_label=False``; SCLIP ``configs/cls_context60.txt``
  lists the same order).
- ``coco_object``: COCO-Object, background + the 80 COCO things in category order (1 = person), the
  conversion of COCO-Stuff 164k that training-free OVSS papers use (GroupViT
  ``convert_dataset/convert_coco_object.py``: thing category k -> its contiguous index + 1, stuff -> 0;
  SCLIP/NACLIP ``configs/cls_coco_object.txt`` for the names).

Prompt names are the multi-word forms the papers' prompts use ("potted plant", "tv monitor") and aliases
follow SCLIP's class files where they name the same thing ("boat: ship", "dining table: table"); the
official dataset spelling ("pottedplant", "tvmonitor") is kept for matching. Matching a vocabulary
name to a benchmark class ignores case, spaces and punctuation and accepts the official name, the prompt
name or an alias.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from diffseg.eval.errors import EvaluationError


@dataclass(frozen=True)
class BenchmarkClass:
    """One ground-truth class: its official dataset name, prompt name and aliases."""

    official: str  # as the dataset's class list spells it ("pottedplant")
    prompt: str  # the vocabulary name ("potted plant")
    aliases: tuple[str, ...] = ()  # extra words of the class's prompt span


def _classes(spec: str) -> tuple[BenchmarkClass, ...]:
    """Classes from lines ``official`` or ``official = prompt: alias, alias`` (id = line number - 1)."""
    out = []
    for line in spec.strip().splitlines():
        official, _, rest = line.strip().partition("=")
        prompt, _, aliases = (rest or official).partition(":")
        out.append(BenchmarkClass(official.strip(), prompt.strip(), tuple(a.strip() for a in aliases.split(",") if a.strip())))
    return tuple(out)


# mmsegmentation mmseg/datasets/voc.py (PascalVOCDataset.METAINFO classes); aliases as SCLIP cls_voc21.txt
VOC21 = _classes("""
background
aeroplane = aeroplane: airplane
bicycle
bird
boat = boat: ship
bottle
bus
car
cat
chair
cow
diningtable = dining table: table
dog
horse
motorbike = motorbike: motorcycle
person
pottedplant = potted plant
sheep
sofa = sofa: couch
train
tvmonitor = tv monitor: television, monitor
""")

# mmsegmentation mmseg/datasets/pascal_context.py (PascalContextDataset, 60 classes, 0 = background)
CONTEXT60 = _classes("""
background
aeroplane = aeroplane: airplane
bag
bed
bedclothes
bench
bicycle
bird
boat = boat: ship
book
bottle
building
bus
cabinet
car
cat
ceiling
chair
cloth
computer
cow
cup
curtain
dog
door
fence
floor
flower
food
grass
ground
horse
keyboard
light
motorbike = motorbike: motorcycle
mountain
mouse
person
plate
platform
pottedplant = potted plant
road
rock
sheep
shelves = shelves: shelf
sidewalk
sign
sky
snow
sofa = sofa: couch
table
track
train
tree
truck
tvmonitor = tv monitor: television, monitor
wall
water
window
wood
""")

# COCO things in category order (GroupViT convert_coco_object.py; names of SCLIP cls_coco_object.txt)
COCO_OBJECT = _classes("""
background
person
bicycle
car
motorcycle = motorcycle: motorbike
airplane = airplane: aeroplane
bus
train
truck
boat = boat: ship
traffic light
fire hydrant
stop sign
parking meter
bench
bird
cat
dog
horse
sheep
cow
elephant
bear
zebra
giraffe
backpack
umbrella
handbag
tie
suitcase
frisbee
skis
snowboard
sports ball
kite
baseball bat
baseball glove
skateboard
surfboard
tennis racket
bottle
wine glass
cup
fork
knife
spoon
bowl
banana
apple
sandwich
orange
broccoli
carrot
hot dog
pizza
donut
cake
chair
couch = couch: sofa
potted plant
bed
dining table = dining table: table
toilet
tv = tv: television, monitor
laptop
mouse
remote
keyboard
cell phone
microwave
oven
toaster
sink
refrigerator
book
clock
vase
scissors
teddy bear
hair drier = hair drier: hair dryer
toothbrush
""")

BENCHMARKS: dict[str, tuple[BenchmarkClass, ...]] = {
    "voc21": VOC21,
    "context60": CONTEXT60,
    "coco_object": COCO_OBJECT,
}
BACKGROUND_ID = 0  # every built-in benchmark's background id (255 is ignore)


def _key(name: str) -> str:
    """Matching key of a class name: lower case, letters and digits only ("TV-monitor" -> "tvmonitor")."""
    return re.sub(r"[^0-9a-z]", "", name.casefold())


def benchmark_of(name: str) -> tuple[BenchmarkClass, ...] | None:
    """The classes of built-in benchmark `name` ("voc21", "context60", "coco_object"; case, "-" and "_"
    ignored), in ground-truth id order; None when `name` is not one."""
    by_key = {_key(k): v for k, v in BENCHMARKS.items()}
    return by_key.get(_key(name)) if isinstance(name, str) and "/" not in name and "." not in name else None


def builtin_vocabulary(name: str) -> list[str] | None:
    """The vocabulary lines of benchmark `name` (every class but background), ``"name: alias, alias"``
    as :meth:`diffseg.vocabulary.Vocabulary.from_text` parses them; None when `name` is not built in."""
    classes = benchmark_of(name)
    if classes is None:
        return None
    return [c.prompt + (": " + ", ".join(c.aliases) if c.aliases else "") for c in classes[1:]]


def builtin_names(name: str) -> dict[int, str] | None:
    """Ground-truth id -> official class name of benchmark `name`; None when it is not built in."""
    classes = benchmark_of(name)
    return None if classes is None else {i: c.official for i, c in enumerate(classes)}


def builtin_class_map(name: str, vocabulary: list[str]) -> dict[str, int] | None:
    """{vocabulary name: ground-truth id} plus ``background``, for a run's `vocabulary` under benchmark
    `name`; None when `name` is not built in.

    A vocabulary name matches a class by its official name, prompt name or an alias (case, spaces and
    punctuation ignored). EvaluationError names the vocabulary classes that match none.
    """
    classes = benchmark_of(name)
    if classes is None:
        return None
    ids: dict[str, int] = {}
    for gid, c in enumerate(classes):
        for label in (c.official, c.prompt, *c.aliases):
            ids.setdefault(_key(label), gid)
    unmatched = [v for v in vocabulary if _key(v) not in ids]
    if unmatched:
        raise EvaluationError(
            f"vocabulary classes {unmatched} are not classes of the built-in benchmark {name!r} "
            f"(its classes: {', '.join(c.prompt for c in classes[1:])}); segment with `--vocab {name}`, or "
            "give --class-map a file that maps each vocabulary name to its id"
        )
    return {"background": BACKGROUND_ID, **{v: ids[_key(v)] for v in vocabulary}}
