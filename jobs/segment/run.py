"""The segment job as a jobs.common.runner.Job: its checks, its planning and its dataset (the runner
does the rest, shared with jobs.synthesize; its docstring lists the steps and exit codes).

Checks that need no image: methods, vocabulary, model URI (and that it runs at ``--resolution`` and
builds the vocabulary's prompt with the run's recipe: --context, --template, --separator), OUTPUT
writable, INPUT listable, run identity. Planning: the listed URIs the run does not have yet, at most
``--limit`` of them, cut into sorted units of ``--unit-size``.
"""

from __future__ import annotations

import logging

import pyarrow as pa

from diffseg.lake.schemas import SEGMENT_TABLES
from diffseg.lake.units import units_of_sorted
from jobs.common.checks import check_model, check_model_setup, load_vocabulary, writable_store
from jobs.common.config import ConfigError, JobConfig
from jobs.common.runner import Checked, Job, Planned, Words
from jobs.common.runner import run as run_job


class SegmentJob(Job):
    log = logging.getLogger("jobs.segment")
    tables = SEGMENT_TABLES
    words = Words(items="images", done="segmented", run_done="run_images_done", planning="checks_and_listing_s")

    def check(self, config: JobConfig) -> Checked:
        from diffseg import methods as method_registry
        from diffseg.lake.manifest import run_identity
        from diffseg.model import redact_uri

        unknown = [m for m in config.methods if m not in method_registry.available()]
        if unknown:
            raise ConfigError(f"--method {', '.join(unknown)}: unknown; available: {', '.join(method_registry.available())}")
        vocab = load_vocabulary("--vocab", config.vocab)
        check_model(config.model)
        check_prompt(config, vocab)
        store = writable_store(config.output)
        uris = listed_images(config)  # Arrow strings: no Python str per URI while planning
        vocab_hash = vocab.hash(redact_uri(config.model))
        identity = run_identity(config.model, vocab_hash, config.methods, config.resolution, config.method_params,
                                config.recipe_changes())
        return Checked(store, vocab, config.vocab, vocab_hash, identity, uris)

    def plan(self, config: JobConfig, checked: Checked, done) -> Planned:
        from diffseg.model import redact_uri

        if not isinstance(checked.inputs, pa.Array):  # containers: a unit per shard or row group
            return self._plan_containers(config, checked.inputs, done)
        uris = checked.inputs
        todo = done.exclude(uris, retry_errors=config.retry_errors)
        limited_out = 0
        if config.limit is not None and len(todo) > config.limit:
            limited_out = len(todo) - config.limit
            todo = todo.slice(0, config.limit)
        units = spread(units_of_sorted(todo, config.unit_size))
        counts = {"listed": len(uris), "already_done": len(uris) - len(todo) - limited_out, "limited_out": limited_out,
                  "to_process": len(todo), "units_to_process": len(units)}
        self.log.info("INPUT %s: %d images listed, %d already done in run %r, %d to process in %d unit(s)",
                      redact_uri(config.input), len(uris), counts["already_done"], config.run_id, len(todo), len(units))
        return Planned(units, counts, f"{len(uris)} input images")

    def _plan_containers(self, config: JobConfig, listing, done) -> Planned:
        from diffseg.model import redact_uri
        from jobs.segment.containers import plan_containers

        units, counts = plan_containers(listing.sources, done, config.limit)
        counts.update(listed=len(listing.sources), already_done=len(done), to_process=counts["containers_to_process"],
                      units_to_process=len(units))
        self.log.info("INPUT %s: %d %s, %d already done in run %r, %d unit(s) to process", redact_uri(config.input),
                      len(listing.sources), listing.form, counts["containers_done"], config.run_id, len(units))
        return Planned(spread(units), counts, f"{len(listing.sources)} {listing.form} containers")

    def dataset(self, config: JobConfig, checked: Checked, units, resources, target):
        from jobs.segment.dataset import build_dataset

        return build_dataset(units, config, resources, checked.vocab, target)


    def manifest_extra(self, manifest: dict, config: JobConfig, checked: Checked) -> dict:
        """Records the recipe the actors' Segmenters run (resolved as they resolve it)."""
        from diffseg.segmenter import SegmenterConfig, resolve_recipe

        manifest["recipe"] = resolve_recipe(config.methods, SegmenterConfig(**config.recipe_kwargs()), checked.vocab)
        return manifest


def listed_images(config: JobConfig):
    """INPUT in ``--input-format`` (InputError, exit 2: a missing, empty or ambiguous INPUT): loose files as
    a sorted pyarrow StringArray of URIs, containers (WebDataset shards, Parquet files with image bytes) as
    their diffseg.inputs.Listing (planned one unit per shard or row group: jobs.segment.containers)."""
    from diffseg.inputs import list_input
    from diffseg.model import redact_uri

    listing = list_input(config.input, config.input_format)
    SegmentJob.log.info("INPUT %s: %s (%s)", redact_uri(config.input), listing.form, listing.detected or "auto")
    return listing.uris if listing.form == "files" else listing


def check_prompt(config: JobConfig, vocab) -> None:
    """ConfigError unless the model runs at ``--resolution`` and its tokenizer builds the prompt the actors'
    Segmenters will build: the recipe resolved as they resolve it (--context, --template, --separator over
    the methods' own), so an unusable template exits 2 here, before Ray starts or any image is read."""
    from diffseg.segmenter import SegmenterConfig, resolve_recipe, vocab_with_template

    recipe = resolve_recipe(config.methods, SegmenterConfig(**config.recipe_kwargs()), vocab)
    given = [o for o, v in (("--template", config.template), ("--separator", config.separator)) if v is not None]
    check_model_setup(config.model, vocab_with_template(vocab, recipe), config.resolution, mode=recipe["context"],
                      option="/".join(["--vocab", *given]), separator=recipe["separator"])


def run(config: JobConfig) -> int:
    """Runs the segment job described by `config`; returns the process exit code."""
    return run_job(SegmentJob(), config)


def spread(units: list) -> list:
    """Units in a spread order (by their id, a hash), so the reads in flight are not one moving range of
    adjacent keys (a store throttles per key prefix); images within a unit stay sorted."""
    return sorted(units, key=lambda u: u.unit_id)
