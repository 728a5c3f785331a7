"""One invocation of ``python -m jobs.synthesize``, from checks to summary.

The flow mirrors jobs.segment.run and reuses its exactly-once machinery (diffseg.lake.units, diffseg.lake.writer) and its
Ray part (jobs.common.runner.process, steps 3 and 4):

1. Checks before any model work: options, classes, model URI, OUTPUT writable, run identity (model,
   classes, prompt, steps, guidance, resolution, PAMR, dtype). A failure exits 2 naming the option.
2. Reads the commit markers, removes a killed run's debris, drops the (class, seed) items the run
   already has and cuts the rest into units (jobs.synthesize.config). Nothing left: says so, exits 0
   without starting Ray.
3. Runs the Ray Data pipeline (jobs.synthesize.dataset.build_generation_dataset); the UnitWriter commits units as
   they complete.
4. Rewrites manifest.json, prints a one-line summary, returns the exit code (0 done or nothing to do;
   1 failed, rerun to finish; 2 bad option or refused run; 3 more errors than --max-error-fraction).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

from diffseg.lake.manifest import RunConflictError, build_manifest, check_run_identity, run_identity
from diffseg.lake.sample_schemas import SYNTH_TABLES
from diffseg.lake.store import OutputError, OutputStore
from diffseg.lake.units import check_run_id, done_set, load_commits, remove_debris
from jobs.common.config import ConfigError
from jobs.common.runner import EXIT_USAGE, RayJob, process, progress_fields
from jobs.synthesize.config import SynthConfig, make_synth_units

log = logging.getLogger("jobs.synthesize")
SYNTH_JOB = RayJob(log, SYNTH_TABLES, "generated", "checks_and_planning_s")
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
    from jobs.segment.run import check_model

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
        c = {**counts, **SYNTH_JOB.writer_counts(writer),
             "run_items_done": len(done) + (writer.counts["images"] if writer else 0)}
        m = build_manifest(status=status, run_id=config.run_id, output=config.output, config=config.to_dict(),
                           model=config.model, vocab=vocab, vocab_spec=config.classes, vocab_hash=names_hash,
                           counts=c, timings=timings or {}, started_at=started_at, error=error,
                           **progress_fields(run_markers, resources, writer))
        m["job"] = JOB
        m["vocabulary"]["template"] = config.prompt  # the generation prompt, not the segment job's template
        m["vocabulary"]["class_ids"] = {n: i + 1 for i, n in enumerate(vocab.names)}
        m["generation"] = {"method": "seediff", "steps": config.steps, "guidance": config.guidance,
                           "resolution": config.resolution, "pamr": config.pamr, "seeds": [config.seed,
                           config.seed + config.per_class - 1], "per_class": config.per_class}
        return m

    def dataset(resources):
        from jobs.synthesize.dataset import build_generation_dataset

        class_ids = {n: i + 1 for i, n in enumerate(vocab.names)}
        return build_generation_dataset(units, config, resources, class_ids)

    return process(SYNTH_JOB, config, store, units, dataset, manifest, model=model, run_hash=names_hash,
                   all_done=f"{requested} (class, seed) samples", t0=t0, t_planned=t_plan, t_ray=t_plan)
