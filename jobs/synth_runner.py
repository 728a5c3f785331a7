"""One invocation of ``python -m jobs.synthesize``, from checks to summary.

The flow mirrors jobs.runner and reuses its exactly-once machinery (jobs.units, jobs.writer):

1. Checks before any model work: options, classes, model URI, OUTPUT writable, run identity (model,
   classes, prompt, steps, guidance, resolution, PAMR, dtype). A failure exits 2 naming the option.
2. Reads the commit markers, removes a killed run's debris, drops the (class, seed) items the run
   already has and cuts the rest into units (jobs.synth_config). Nothing left: says so, exits 0
   without starting Ray.
3. Runs the Ray Data pipeline (jobs.pipeline.build_generation_dataset); the UnitWriter commits units as
   they complete.
4. Rewrites manifest.json, prints a one-line summary, returns the exit code (0 done or nothing to do;
   1 failed, rerun to finish; 2 bad option or refused run; 3 more errors than --max-error-fraction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from jobs.config import ConfigError, resolve_resources
from jobs.manifest import RunConflictError, build_manifest, check_run_identity, run_identity, write_manifest
from jobs.store import OutputError, OutputStore
from jobs.synth_config import SynthConfig, make_synth_units
from jobs.synth_tables import SYNTH_TABLES
from jobs.units import check_run_id, done_set, load_commits, remove_debris

log = logging.getLogger("jobs.synthesize")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_TOO_MANY_ERRORS = 0, 1, 2, 3
JOB = "synthesize"


def classes_hash(names: list[str], prompt: str, model: str) -> str:
    """sha256 hex of the class list, the prompt template and the model (the run's "vocab_hash")."""
    payload = {"classes": list(names), "prompt": prompt, "model": model}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def synth_identity(config: SynthConfig, model: str, names_hash: str) -> dict:
    """What changes the samples: two invocations with equal identities may share a run id. The number
    of images per class and the first seed are not part of it: raising --per-class adds items."""
    identity = run_identity(model, names_hash, ["seediff"], config.resolution)
    identity.update(job=JOB, prompt=config.prompt, steps=config.steps, guidance=float(config.guidance),
                    pamr=config.pamr, dtype=config.dtype)
    return identity


def preflight(config: SynthConfig):
    """Checks that need no model. Returns (vocab, store); raises ValueError naming the option."""
    from diffseg import Vocabulary
    from diffseg.model import ModelLoadError
    from jobs.runner import check_model

    check_run_id(config.run_id)
    try:
        vocab = Vocabulary.from_spec(config.classes)
    except (ValueError, OSError) as exc:
        raise ConfigError(f"--classes {config.classes!r}: {exc}") from exc
    if any(vocab.aliases.get(n) for n in vocab.names):
        log.warning("--classes: aliases are ignored by synthesize (the prompt names the class itself)")
    try:
        check_model(config.model)
    except ModelLoadError as exc:
        raise ConfigError(str(exc)) from exc
    store = OutputStore(config.output)
    store.check_writable()
    return vocab, store


def run(config: SynthConfig) -> int:
    """Runs the generation job described by `config`; returns the process exit code."""
    from diffseg.model import redact_uri

    t0 = time.monotonic()
    started_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    model = redact_uri(config.model)
    try:
        vocab, store = preflight(config)
        names_hash = classes_hash(vocab.names, config.prompt, model)
        check_run_identity(store, config.run_id, synth_identity(config, model, names_hash), vocab.names)
    except (ConfigError, OutputError, RunConflictError, ValueError) as exc:
        log.error("%s", exc)
        print(f"diffseg: error: {exc}")
        return EXIT_USAGE

    all_markers = load_commits(store)
    debris = remove_debris(store, all_markers, SYNTH_TABLES.schemas)
    run_markers = [m for m in all_markers if m["run_id"] == config.run_id]
    done = done_set(run_markers)
    requested = len(vocab.names) * config.per_class
    units = make_synth_units(vocab.names, config.seeds, config.unit_size, done)
    todo = sum(len(u.uris) for u in units)
    counts = {"requested": requested, "already_done": requested - todo, "to_generate": todo,
              "units_to_process": len(units), "debris_files_removed": len(debris)}
    log.info("%d classes x %d seeds = %d samples requested, %d already done in run %r, %d to generate in %d unit(s)",
             len(vocab.names), config.per_class, requested, counts["already_done"], config.run_id, todo, len(units))
    t_plan = time.monotonic()

    def manifest(status, resources=None, writer=None, error=None, timings=None):
        committed = sorted({m["unit_id"] for m in run_markers} | set(writer.committed if writer else []))
        c = dict(counts)
        if writer is not None:
            c.update(processed=writer.counts["images"], generated=writer.counts["segmented"],
                     errors=writer.counts["errors"], errors_by_stage=writer.errors_by_stage(),
                     sample_rows=writer.counts["sample_rows"], units_committed=len(writer.committed),
                     units_incomplete=len(writer.incomplete))
        c["run_items_done"] = len(done) + (writer.counts["images"] if writer else 0)
        res = None if resources is None else {k: getattr(resources, k) for k in resources.__dataclass_fields__}
        m = build_manifest(status=status, run_id=config.run_id, output=config.output, config=config.to_dict(),
                           resources=res, model=config.model, vocab=vocab, vocab_spec=config.classes,
                           vocab_hash=names_hash, counts=c, timings=timings or {}, committed_units=committed,
                           started_at=started_at, error=error)
        m["job"] = JOB
        m["vocabulary"]["template"] = config.prompt  # the generation prompt, not the segment job's template
        m["vocabulary"]["class_ids"] = {n: i + 1 for i, n in enumerate(vocab.names)}
        m["generation"] = {"method": "seediff", "steps": config.steps, "guidance": config.guidance,
                           "resolution": config.resolution, "pamr": config.pamr, "seeds": [config.seed,
                           config.seed + config.per_class - 1], "per_class": config.per_class}
        return m

    if not units:
        write_manifest(store, manifest("nothing to do", timings={"total_s": round(time.monotonic() - t0, 3)}))
        print(f"diffseg: nothing to do: all {requested} (class, seed) samples are already committed in run "
              f"{config.run_id!r} of {redact_uri(config.output)} (no model work)")
        return EXIT_OK
    write_manifest(store, manifest("running"))
    return _process(config, store, units, vocab, names_hash, model, manifest, t0, t_plan)


def _process(config, store, units, vocab, names_hash, model, manifest, t0, t_plan) -> int:
    """Ray part of run(): resources, pipeline, unit writer, final manifest and summary."""
    import ray

    from diffseg.model import redact_uri
    from jobs.pipeline import build_generation_dataset, cluster_resources, init_ray
    from jobs.writer import UnitWriter

    started_ray = not ray.is_initialized()
    writer = resources = None
    t_run = time.monotonic()
    try:
        init_ray(config)
        cpus, gpus = cluster_resources()
        try:
            resources = resolve_resources(config, cpus, gpus)
        except ConfigError as exc:
            log.error("%s", exc)
            write_manifest(store, manifest("failed", error=str(exc), timings=_timings(t0, t_plan, t_run, None)))
            print(f"diffseg: error: {exc}")
            return EXIT_USAGE
        log.info("cluster: %g CPUs, %g GPUs -> %d actor(s) x (%g CPU, %g GPU) on %s, batch %d",
                 cpus, gpus, resources.actors, resources.cpus_per_actor, resources.gpus_per_actor,
                 resources.device, config.batch_size)
        t_run = time.monotonic()
        writer = UnitWriter(store, config.run_id, units, model, names_hash, tables=SYNTH_TABLES)
        class_ids = {n: i + 1 for i, n in enumerate(vocab.names)}
        dataset = build_generation_dataset(units, config, resources, class_ids)
        for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=None):
            writer.add(batch)
        if writer.incomplete:
            raise RuntimeError(f"{len(writer.incomplete)} unit(s) did not receive all their rows")
    except Exception as exc:
        message = f"{type(exc).__name__}: {exc}"
        write_manifest(store, manifest("failed", resources, writer, error=message[:2000],
                                       timings=_timings(t0, t_plan, t_run, writer)))
        log.exception("run failed")
        print(f"diffseg: FAILED after {writer.counts['images'] if writer else 0} samples were committed "
              f"({len(writer.committed) if writer else 0} units; rerun the same command to finish the rest): "
              f"{message[:500]}")
        return EXIT_FAILED
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
    timings = _timings(t0, t_plan, t_run, writer)
    items, errors = writer.counts["images"], writer.counts["errors"]
    fraction = errors / items if items else 0.0
    too_many = fraction > config.max_error_fraction
    write_manifest(store, manifest("too many errors" if too_many else "succeeded", resources, writer, timings=timings))
    print(
        f"diffseg: {items} samples ({writer.counts['segmented']} generated, {errors} errors = {fraction:.1%}) in "
        f"{timings['process_s']:.1f} s, {timings['samples_per_s']:.2f} samples/s; {len(writer.committed)} units "
        f"committed to run {config.run_id!r} of {redact_uri(config.output)}"
        + (f"; error fraction above --max-error-fraction {config.max_error_fraction:g}" if too_many else "")
    )
    return EXIT_TOO_MANY_ERRORS if too_many else EXIT_OK


def _timings(t0, t_plan, t_run, writer) -> dict:
    now = time.monotonic()
    items = writer.counts["images"] if writer else 0
    process = now - t_run
    return {"checks_and_planning_s": round(t_plan - t0, 3), "ray_start_s": round(t_run - t_plan, 3),
            "process_s": round(process, 3), "total_s": round(now - t0, 3),
            "samples_per_s": round(items / process, 3) if process > 0 else 0.0}
