"""The papers' recipes and a Segmenter's options: which timesteps, prompt template, separator, context mode,
class-token weight and noise one forward runs with (METHODS.md), resolved from the methods requested and the
options given (:func:`resolve_recipe`, recorded in every run's manifest)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from diffseg.vocabulary import (
    DEFAULT_CLASS_TEMPLATE,
    DEFAULT_TEMPLATE,
    SEPARATOR,
    Vocabulary,
    class_token_weight,
)

# Each paper's own recipe when its method runs alone (METHODS.md); several methods share DiffSegmenter's.
# template: the joint prompt ("{classes}"), class_template: per_class ("{class}"); class_token_weight None:
# the context mode's default (diffseg.vocabulary.CLASS_TOKEN_WEIGHT); noise False: the U-Net sees the
# posterior-mean latent itself. SeeDiff is a generation method: for segmenting a real image it takes
# DiffSegmenter's one forward at t=100 (its paper averages over the generation steps) and its own prompt.
RECIPES = {
    "diffsegmenter": {"timesteps": (100,), "template": DEFAULT_TEMPLATE, "class_template": DEFAULT_CLASS_TEMPLATE,
                      "separator": SEPARATOR, "class_token_weight": None, "noise": True},
    "seediff": {"timesteps": (100,), "template": "a photo of {classes}", "class_template": "a photo of a {class}",
                "separator": SEPARATOR, "class_token_weight": 1.0, "noise": True},
    "maskdiffusion": {"timesteps": (0,), "template": "{classes}", "class_template": "{class}",
                      "separator": " and ", "class_token_weight": 1.0, "noise": False},
}
RECIPES["maskdiffusion-unsupervised"] = RECIPES["maskdiffusion"]
SHARED_RECIPE = "diffsegmenter"  # the recipe of several methods in one forward (DESIGN.md "Prompts")


@dataclass(frozen=True)
class SegmenterConfig:
    """Options of a Segmenter. None: the recipe's value (diffseg.recipes: each paper's own when its method
    runs alone, DiffSegmenter's when several share the forward); a value given overrides the recipe."""

    resolution: int = 512  # model input side (square; the paper ignores aspect ratio, results are resized back)
    timesteps: tuple[int, ...] | None = None  # one U-Net forward per timestep, maps averaged
    context: str = "joint"  # "joint": one context for the vocabulary; "per_class": the paper's protocol
    seed: int = 0  # mixed into every image's noise seed (the key decides the rest)
    max_label_side: int = 1024  # argmax at most this long side, then nearest-resize to the original size
    class_token_weight: float | None = None  # Compel's up-weighting of class tokens (1.21 per_class, 1.0 joint)
    template: str | None = None  # "{classes}" (joint) or "{class}" (per_class) is replaced by the class(es)
    separator: str | None = None  # between classes (and aliases) in a joint prompt
    noise: bool | None = None  # add seeded noise at t (False: the posterior-mean latent itself, MaskDiffusion)


def resolve_recipe(methods: Sequence[str], config: SegmenterConfig, vocab: Vocabulary) -> dict:
    """The recipe a Segmenter runs: {"name", "timesteps", "template", "separator", "context",
    "class_token_weight", "noise"} (plain values, for a manifest).

    The paper's own recipe (:data:`RECIPES`) when one method runs alone (a user-registered method:
    DiffSegmenter's), the shared one (DiffSegmenter's) for several; each option set in `config` (not
    None) overrides its entry, and a `vocab` whose template is not the default keeps its template.
    Explicit timesteps without an explicit `noise` add noise (``noise`` False only means t's own latent).
    """
    name = methods[0] if len(methods) == 1 and methods[0] in RECIPES else SHARED_RECIPE
    base = RECIPES[name]
    mode = config.context
    key, default = ("template", DEFAULT_TEMPLATE) if mode == "joint" else ("class_template", DEFAULT_CLASS_TEMPLATE)
    template = config.template or (getattr(vocab, key) if getattr(vocab, key) != default else base[key])
    noise = config.noise if config.noise is not None else (base["noise"] or config.timesteps is not None)
    separator = config.separator if config.separator is not None else base["separator"]
    return {
        "name": name if len(methods) == 1 else f"shared ({SHARED_RECIPE})",
        "timesteps": [int(t) for t in (config.timesteps if config.timesteps is not None else base["timesteps"])],
        "template": template,
        "separator": separator,
        "context": mode,
        "class_token_weight": class_token_weight(
            mode, config.class_token_weight if config.class_token_weight is not None else base["class_token_weight"]
        ),
        "noise": bool(noise),
    }


def vocab_with_template(vocab: Vocabulary, recipe: dict) -> Vocabulary:
    """`vocab` with the recipe's template for its context mode (the same object when it already has it)."""
    key = "template" if recipe["context"] == "joint" else "class_template"
    if getattr(vocab, key) == recipe["template"]:
        return vocab
    return Vocabulary(vocab.names, vocab.aliases, **{
        "template": vocab.template, "class_template": vocab.class_template, key: recipe["template"]})
