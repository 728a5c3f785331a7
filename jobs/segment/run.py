"""One invocation of the segmentation job, from checks to summary (what ``python -m jobs.segment`` runs).

1. Checks that need no image: methods, vocabulary, model URI, OUTPUT writable, INPUT listable, run
   identity. Any failure exits 2 with a message naming the option, before an image is read.
2. Reads the commit markers, removes a killed run's debris, drops the URIs the run already has (the
   done set), applies ``--limit`` and splits the rest into units. Nothing left: says so, exits 0.
3. Runs the Ray Data pipeline (jobs.segment.dataset); the UnitWriter commits units as they complete.
4. Rewrites manifest.json, prints a one-line summary, returns the exit code.

Steps 3 and 4 (and the "nothing to do" exit) are jobs.common.runner.process, shared with jobs.synthesize.

Exit codes: 0 success (also "nothing to do"); 1 the run failed (exception, or units left incomplete;
committed units are kept and the next run finishes the rest); 2 bad options or a failed check before
any image was read; 3 finished, but the error fraction was above ``--max-error-fraction``.
"""

from __future__ import annotations

import logging
import time

from diffseg.lake.inputs import InputError, list_inputs
from diffseg.lake.manifest import RunConflictError, build_manifest, check_run_identity, run_identity
from diffseg.lake.schemas import SEGMENT_TABLES
from diffseg.lake.store import OutputError, OutputStore
from diffseg.lake.units import check_run_id, done_set, load_commits, make_units, remove_debris
from jobs.common.config import ConfigError, JobConfig
from jobs.common.runner import EXIT_USAGE, RayJob, process, progress_fields

log = logging.getLogger("jobs.segment")
SEGMENT_JOB = RayJob(log, SEGMENT_TABLES, "segmented", "checks_and_listing_s")


class PreflightError(ValueError):
    """A check before any image is read failed (exit code 2)."""


def check_model(uri: str) -> None:
    """Raises ModelLoadError when `uri` is not a builtin model nor a diffusers checkpoint (nothing is loaded)."""
    from diffseg.model import check_model_uri

    check_model_uri(uri)


def preflight(config: JobConfig):
    """All checks that need no image. Returns (vocab, vocab_hash, store, uris); raises PreflightError."""
    from diffseg import Vocabulary
    from diffseg import methods as method_registry
    from diffseg.model import ModelLoadError, redact_uri

    try:
        check_run_id(config.run_id)
        unknown = [m for m in config.methods if m not in method_registry.available()]
        if unknown:
            raise ConfigError(f"--method {', '.join(unknown)}: unknown; available: {', '.join(method_registry.available())}")
        try:
            vocab = Vocabulary.from_spec(config.vocab)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"--vocab {config.vocab!r}: {exc}") from exc
        check_model(config.model)
        store = OutputStore(config.output)
        store.check_writable()
        uris = list_inputs(config.input)
    except (ConfigError, ModelLoadError, OutputError, InputError, ValueError) as exc:
        raise PreflightError(str(exc)) from exc
    return vocab, vocab.hash(redact_uri(config.model)), store, uris


def run(config: JobConfig) -> int:
    """Runs the job described by `config`; returns the process exit code (see the module docstring)."""
    from diffseg.model import redact_uri

    t0 = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    try:
        vocab, vocab_hash, store, uris = preflight(config)
        identity = run_identity(config.model, vocab_hash, config.methods, config.resolution, config.method_params)
        check_run_identity(store, config.run_id, identity, vocab.names)
    except (PreflightError, RunConflictError) as exc:
        log.error("%s", exc)
        print(f"diffseg: error: {exc}")
        return EXIT_USAGE
    model = redact_uri(config.model)
    t_list = time.monotonic()

    all_markers = load_commits(store)
    debris = remove_debris(store, all_markers)
    run_markers = [m for m in all_markers if m["run_id"] == config.run_id]
    done = done_set(run_markers)
    todo = [u for u in uris if u not in done]
    limited_out = 0
    if config.limit is not None and len(todo) > config.limit:
        limited_out = len(todo) - config.limit
        todo = todo[: config.limit]
    units = make_units(todo, config.unit_size)
    counts = {"listed": len(uris), "already_done": len(uris) - len(todo) - limited_out, "limited_out": limited_out,
              "to_process": len(todo), "units_to_process": len(units), "debris_files_removed": len(debris)}
    log.info("INPUT %s: %d images listed, %d already done in run %r, %d to process in %d unit(s)",
             redact_uri(config.input), len(uris), counts["already_done"], config.run_id, len(todo), len(units))

    def manifest(status, resources=None, writer=None, error=None, timings=None):
        c = {**counts, **SEGMENT_JOB.writer_counts(writer),
             "run_images_done": len(done) + (writer.counts["images"] if writer else 0)}
        return build_manifest(status=status, run_id=config.run_id, output=config.output, config=config.to_dict(),
                              model=config.model, vocab=vocab, vocab_spec=config.vocab, vocab_hash=vocab_hash,
                              counts=c, timings=timings or {}, started_at=started_at, error=error,
                              **progress_fields(run_markers, resources, writer))

    def dataset(resources):
        from jobs.segment.dataset import build_dataset

        return build_dataset(units, config, resources, vocab)

    return process(SEGMENT_JOB, config, store, units, dataset, manifest, model=model, run_hash=vocab_hash,
                   all_done=f"{len(uris)} input images", t0=t0, t_planned=t_list)
