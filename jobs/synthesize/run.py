"""The synthesize job as a jobs.common.runner.Job: its checks, its planning, its dataset and its
manifest fields (the runner does the rest, shared with jobs.segment; its docstring lists the steps and
exit codes).

Checks before any model work: options, classes, model URI, OUTPUT writable, run identity (model,
classes, prompt, steps, guidance, resolution, PAMR, dtype). Planning: the (class, seed) items the run
does not have yet, cut into units (jobs.synthesize.config).
"""

from __future__ import annotations

import hashlib
import json
import logging

from diffseg.lake.schemas import SYNTH_TABLES
from jobs.common.checks import check_model, check_model_setup, load_vocabulary, writable_store
from jobs.common.runner import Checked, Job, Planned, Words
from jobs.common.runner import run as run_job
from jobs.synthesize.config import SynthConfig, make_synth_units

JOB = "synthesize"


def classes_hash(names: list[str], prompt: str, model: str) -> str:
    """sha256 hex of the class list, the prompt template and the model (the run's "vocab_hash")."""
    payload = {"classes": list(names), "prompt": prompt, "model": model}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def synth_identity(config: SynthConfig, model: str, names_hash: str) -> dict:
    """What changes the samples: two invocations with equal identities may share a run id. The number
    of images per class and the first seed are not part of it: raising --per-class adds items."""
    from diffseg.lake.manifest import run_identity

    identity = run_identity(model, names_hash, ["seediff"], config.resolution)
    identity.update(job=JOB, prompt=config.prompt, steps=config.steps, guidance=float(config.guidance),
                    pamr=config.pamr, dtype=config.dtype)
    return identity


def class_ids(names: list[str]) -> dict[str, int]:
    """class name -> its 1-based position (0 stays background)."""
    return {n: i + 1 for i, n in enumerate(names)}


class SynthesizeJob(Job):
    log = logging.getLogger("jobs.synthesize")
    tables = SYNTH_TABLES
    words = Words(items="samples", done="generated", run_done="run_items_done", planning="checks_and_planning_s")

    def check(self, config: SynthConfig) -> Checked:
        from diffseg import Vocabulary
        from diffseg.model import redact_uri

        vocab = load_vocabulary("--classes", config.classes)
        if any(vocab.aliases.get(n) for n in vocab.names):
            self.log.warning("--classes: aliases are ignored by synthesize (the prompt names the class itself)")
        check_model(config.model)
        prompts = Vocabulary(vocab.names, class_template=config.prompt.replace("{}", "{class}"))  # the generation prompt
        check_model_setup(config.model, prompts, config.resolution, mode="per_class", option="--classes")
        store = writable_store(config.output)
        model = redact_uri(config.model)
        names_hash = classes_hash(vocab.names, config.prompt, model)
        return Checked(store, vocab, config.classes, names_hash, synth_identity(config, model, names_hash))

    def plan(self, config: SynthConfig, checked: Checked, done, invocation: str = "") -> Planned:
        names = checked.vocab.names
        requested = len(names) * config.per_class
        units = make_synth_units(names, config.seeds, config.unit_size, done)
        todo = sum(len(u.uris) for u in units)
        counts = {"requested": requested, "already_done": requested - todo, "to_generate": todo,
                  "units_to_process": len(units)}
        self.log.info("%d classes x %d seeds = %d samples requested, %d already done in run %r, %d to generate in "
                      "%d unit(s)", len(names), config.per_class, requested, counts["already_done"], config.run_id,
                      todo, len(units))
        return Planned(units, counts, f"{requested} (class, seed) samples")

    def dataset(self, config: SynthConfig, checked: Checked, units, resources, target):
        from jobs.synthesize.dataset import build_generation_dataset

        return build_generation_dataset(units, config, resources, class_ids(checked.vocab.names), target)

    def manifest_extra(self, manifest: dict, config: SynthConfig, checked: Checked) -> dict:
        manifest["job"] = JOB
        manifest["vocabulary"]["template"] = config.prompt  # the generation prompt, not the segment job's template
        manifest["vocabulary"]["class_ids"] = class_ids(checked.vocab.names)
        manifest["generation"] = {"method": "seediff", "steps": config.steps, "guidance": config.guidance,
                                  "resolution": config.resolution, "pamr": config.pamr,
                                  "seeds": [config.seed, config.seed + config.per_class - 1],
                                  "per_class": config.per_class}
        return manifest


def run(config: SynthConfig) -> int:
    """Runs the generation job described by `config`; returns the process exit code."""
    return run_job(SynthesizeJob(), config)
