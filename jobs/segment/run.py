"""The segment job as a jobs.common.runner.Job: its checks, its planning and its dataset (the runner
does the rest, shared with jobs.synthesize; its docstring lists the steps and exit codes).

Checks that need no image: methods, vocabulary, model URI (and that it runs at ``--resolution`` and
builds the vocabulary's prompt with the run's recipe: --context, --template, --separator), OUTPUT
writable, INPUT listable, run identity. Planning (diffseg.lake.plan): the listed URIs the run does not have
yet, streamed through a local spill by key shard, at most ``--limit`` of them, cut shard by shard into sorted
units of ``--unit-size`` and stored under OUTPUT (``_plans/<run>/<invocation>/``), so the driver holds per
unit a few numbers and no URI; container inputs (shards, row groups) are a list of units, one per container.
"""

from __future__ import annotations

import logging

from diffseg.lake.schemas import SEGMENT_TABLES
from jobs.common.checks import check_model, check_model_setup, load_vocabulary, writable_store
from jobs.common.config import ConfigError, JobConfig
from jobs.common.runner import Checked, Job, Planned, Words
from jobs.common.runner import run as run_job

MANY_UNITS = 200_000  # a plan beyond this many units warns about the driver's memory (--unit-size)
RAY_BYTES_PER_UNIT = 6_600  # Ray Data's driver bookkeeping per unit, measured (docs/benchmarks.md, "Planning")


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
        listing = listed_images(config)  # planned as a stream: jobs.segment.run.SegmentJob.plan
        vocab_hash = vocab.hash(redact_uri(config.model))
        identity = run_identity(config.model, vocab_hash, config.methods, config.resolution, config.method_params,
                                config.recipe_changes())
        return Checked(store, vocab, config.vocab, vocab_hash, identity, listing)

    def plan(self, config: JobConfig, checked: Checked, done, invocation: str = "000000000000") -> Planned:
        from diffseg.lake.plan import plan_keys
        from diffseg.model import redact_uri

        listing = checked.inputs
        if getattr(listing, "form", "files") != "files":  # containers: a unit per shard or row group
            return self._plan_containers(config, listing, done)
        plan, c = plan_keys(listing, done, checked.store, config.run_id, invocation, config.unit_size,
                            limit=config.limit, retry_errors=config.retry_errors)
        counts = {"listed": c.listed, "already_done": c.already_done, "limited_out": c.limited_out,
                  "to_process": c.to_process, "units_to_process": len(plan)}
        self.log.info("INPUT %s: %d images listed, %d already done in run %r, %d to process in %d unit(s)",
                      redact_uri(config.input), c.listed, c.already_done, config.run_id, c.to_process, len(plan))
        if len(plan) > MANY_UNITS:
            self.log.warning("%d units to process: Ray Data keeps about %.0f KB per unit on the driver (~%.1f GB here); "
                             "--unit-size %d would need ~%.1f GB", len(plan), RAY_BYTES_PER_UNIT / 1e3,
                             len(plan) * RAY_BYTES_PER_UNIT / 1e9, 4 * config.unit_size,
                             len(plan) * RAY_BYTES_PER_UNIT / 4e9)
        return Planned(plan, counts, f"{c.listed} input images")

    def _plan_containers(self, config: JobConfig, listing, done) -> Planned:
        """One unit per container (jobs.segment.containers): 10^4-10^5 of them, held as a list."""
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
    """INPUT in ``--input-format`` as its diffseg.inputs.Listing (InputError, exit 2: a missing, empty or
    ambiguous INPUT): loose files are planned from its batches (diffseg.lake.plan), containers (WebDataset
    shards, Parquet files with image bytes) one unit per shard or row group (jobs.segment.containers)."""
    from diffseg.inputs import list_input
    from diffseg.model import redact_uri

    listing = list_input(config.input, config.input_format)
    SegmentJob.log.info("INPUT %s: %s (%s)", redact_uri(config.input), listing.form, listing.detected or "auto")
    return listing


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
    adjacent keys (a store throttles per key prefix); images within a unit stay sorted. (Container units;
    loose files are spread by their plan: shard by shard of a key hash, diffseg.lake.plan.)"""
    return sorted(units, key=lambda u: u.unit_id)
