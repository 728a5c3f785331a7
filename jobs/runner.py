"""One invocation of the segmentation job, from checks to summary (what ``python -m jobs.segment`` runs).

1. Checks that need no image: methods, vocabulary, model URI, OUTPUT writable, INPUT listable, run
   identity. Any failure exits 2 with a message naming the option, before an image is read.
2. Reads the commit markers, removes a killed run's debris, drops the URIs the run already has (the
   done set), applies ``--limit`` and splits the rest into units. Nothing left: says so, exits 0.
3. Runs the Ray Data pipeline (jobs.pipeline); the UnitWriter commits units as they complete.
4. Rewrites manifest.json, prints a one-line summary, returns the exit code.

Exit codes: 0 success (also "nothing to do"); 1 the run failed (exception, or units left incomplete;
committed units are kept and the next run finishes the rest); 2 bad options or a failed check before
any image was read; 3 finished, but the error fraction was above ``--max-error-fraction``.
"""

from __future__ import annotations

import logging
import time

from jobs.config import ConfigError, JobConfig, resolve_resources
from jobs.inputs import InputError, list_inputs
from jobs.manifest import RunConflictError, build_manifest, check_run_identity, run_identity, write_manifest
from jobs.store import OutputError, OutputStore
from jobs.units import check_run_id, done_set, load_commits, make_units, remove_debris

log = logging.getLogger("jobs.segment")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = 0, 1, 2, 3


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
        committed = sorted({m["unit_id"] for m in run_markers} | set(writer.committed if writer else []))
        c = dict(counts)
        if writer is not None:
            c.update(processed=writer.counts["images"], segmented=writer.counts["segmented"],
                     errors=writer.counts["errors"], errors_by_stage=writer.errors_by_stage(),
                     mask_rows=writer.counts["mask_rows"], stats_rows=writer.counts["stats_rows"],
                     units_committed=len(writer.committed), units_incomplete=len(writer.incomplete))
        c["run_images_done"] = len(done) + (writer.counts["images"] if writer else 0)
        res = None if resources is None else {k: getattr(resources, k) for k in resources.__dataclass_fields__}
        return build_manifest(status=status, run_id=config.run_id, output=config.output, config=config.to_dict(),
                              resources=res, model=config.model, vocab=vocab, vocab_spec=config.vocab,
                              vocab_hash=vocab_hash, counts=c, timings=timings or {}, committed_units=committed,
                              started_at=started_at, error=error)

    if not units:
        write_manifest(store, manifest("nothing to do", timings={"total_s": round(time.monotonic() - t0, 3)}))
        print(f"diffseg: nothing to do: all {len(uris)} input images are already committed in run "
              f"{config.run_id!r} of {redact_uri(config.output)} (no model work)")
        return EXIT_OK

    write_manifest(store, manifest("running"))
    return _process(config, store, units, vocab, vocab_hash, model, manifest, t0, t_list)


def _process(config, store, units, vocab, vocab_hash, model, manifest, t0, t_list) -> int:
    """Ray part of run(): resources, pipeline, unit writer, final manifest and summary."""
    import ray

    from diffseg.model import redact_uri
    from jobs.pipeline import build_dataset, cluster_resources, init_ray
    from jobs.writer import UnitWriter

    started_ray = not ray.is_initialized()
    writer = resources = None
    t_ray = t_run = time.monotonic()
    try:
        init_ray(config)
        cpus, gpus = cluster_resources()
        try:
            resources = resolve_resources(config, cpus, gpus)
        except ConfigError as exc:
            log.error("%s", exc)
            write_manifest(store, manifest("failed", error=str(exc), timings=_timings(t0, t_list, t_ray, t_run, None)))
            print(f"diffseg: error: {exc}")
            return EXIT_USAGE
        if resources.gpus_per_actor > 0 and resources.actors * resources.gpus_per_actor > gpus:
            log.warning("%d actor(s) x %g GPU(s) requested but the cluster has %g GPU(s) now: the job waits "
                        "for GPU nodes (autoscaler) and does nothing without them", resources.actors,
                        resources.gpus_per_actor, gpus)
        log.info("cluster: %g CPUs, %g GPUs -> %d actor(s) x (%g CPU, %g GPU) on %s, batch %d",
                 cpus, gpus, resources.actors, resources.cpus_per_actor, resources.gpus_per_actor,
                 resources.device, config.batch_size)
        t_run = time.monotonic()
        writer = UnitWriter(store, config.run_id, units, model, vocab_hash)
        dataset = build_dataset(units, config, resources, vocab)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
        if writer.incomplete:
            raise RuntimeError(f"{len(writer.incomplete)} unit(s) did not receive all their rows")
    except Exception as exc:
        timings = _timings(t0, t_list, t_ray, t_run, writer)
        message = f"{type(exc).__name__}: {exc}"
        write_manifest(store, manifest("failed", resources, writer, error=message[:2000], timings=timings))
        log.exception("run failed")
        done_now = writer.counts["images"] if writer else 0
        print(f"diffseg: FAILED after {done_now} images were committed ({len(writer.committed) if writer else 0} "
              f"units; rerun the same command to finish the rest): {message[:500]}")
        return EXIT_FAILED
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    timings = _timings(t0, t_list, t_ray, t_run, writer)
    images, errors = writer.counts["images"], writer.counts["errors"]
    fraction = errors / images if images else 0.0
    too_many = fraction > config.max_error_fraction
    status = "too many errors" if too_many else "succeeded"
    write_manifest(store, manifest(status, resources, writer, timings=timings))
    print(
        f"diffseg: {images} images ({writer.counts['segmented']} segmented, {errors} errors = {fraction:.1%}) in "
        f"{timings['process_s']:.1f} s, {timings['images_per_s']:.2f} images/s; {len(writer.committed)} units "
        f"committed to run {config.run_id!r} of {redact_uri(config.output)}"
        + (f"; error fraction above --max-error-fraction {config.max_error_fraction:g}" if too_many else "")
    )
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK


def _timings(t0, t_list, t_ray, t_run, writer) -> dict:
    now = time.monotonic()
    images = writer.counts["images"] if writer else 0
    process = now - t_run
    return {"checks_and_listing_s": round(t_list - t0, 3), "ray_start_s": round(t_run - t_ray, 3),
            "process_s": round(process, 3), "total_s": round(now - t0, 3),
            "images_per_s": round(images / process, 3) if process > 0 else 0.0}
