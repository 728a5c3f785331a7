"""Settings side by side: evaluate several runs on the same images and rank (run x method) by EVAL mIoU.

Each run is an OUTPUT and a run id in it (``OUTPUT#RUN_ID`` on the command line), segmented with its own
settings (context, filter ratio, timesteps, methods ...). :func:`compare_runs` evaluates every run with
:func:`diffseg.eval.evaluate.evaluate_output` on the images that all of them have (so each row is scored
on the same FIT and EVAL images), fits tau on FIT for each (run, method) when asked, ranks the rows by
their EVAL mIoU and reports which settings differed (:mod:`diffseg.eval.settings`). It writes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from diffseg.eval.errors import EvaluationError
from diffseg.eval.evaluate import evaluate_output
from diffseg.eval.ground_truth import list_ground_truth
from diffseg.eval.predictions import index_masks, names_segments, stems_to_uris
from diffseg.eval.protocol import Split
from diffseg.eval.settings import differing, run_settings
from diffseg.lake.read import OutputError, resolve_run
from diffseg.model import redact_uri


@dataclass(frozen=True)
class RunRef:
    """One run to compare: an OUTPUT and a run id in it (None: its latest invocation's)."""

    output: str
    run_id: str | None = None

    @property
    def label(self) -> str:
        """``OUTPUT#RUN_ID`` without credentials."""
        return f"{redact_uri(self.output)}#{self.run_id}"


def parse_runs(outputs: list[str], run_ids: list[str] | None = None) -> list[RunRef]:
    """The runs named by the command line: each OUTPUT, written ``OUTPUT#RUN_ID`` for one run of it or
    plain for each ``--run-id`` given (its latest run when none is). Order kept."""
    refs = []
    for output in outputs:
        base, sep, rid = output.rpartition("#")
        if sep:
            if not base or not rid:
                raise EvaluationError(f"{output!r}: expected OUTPUT or OUTPUT#RUN_ID")
            refs.append(RunRef(base, rid))
        else:
            refs += [RunRef(output, r) for r in (run_ids or [None])]
    return refs


def common_stems(runs: list[RunRef], truth_stems: set[str], methods: list[str] | None) -> set[str]:
    """Stems with ground truth that every run has masks of, for every method compared."""
    common = set(truth_stems)
    for ref in runs:
        index = index_masks(ref.output, ref.run_id)
        for method, uris in index.uris_by_method.items():
            if not names_segments(method) and (methods is None or method in methods):
                common &= set(stems_to_uris(uris))
    return common


def _rank_key(row: dict) -> tuple:
    return (row["miou"] is None, -(row["miou"] or 0.0))


def compare_runs(
    runs: list[RunRef],
    gt: str,
    class_map: str,
    *,
    methods: list[str] | None = None,
    split: Split | None = None,
    fit_grid: np.ndarray | None = None,
    tau: float | None = None,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """The comparison dict (comparison.json) of `runs` against the ground truth below `gt`.

    Every run is evaluated on the stems all runs have, with the same split; with `fit_grid` each (run,
    method) gets its own tau fitted on FIT. ``ranking``: one row per (run, method), best EVAL mIoU first,
    with the settings that differ between the runs. ``runs``: each run's full settings and metrics.json.
    EvaluationError for fewer than two runs, a run named twice, or no image common to all.
    """
    if len(runs) < 2:
        raise EvaluationError("a comparison needs at least two runs (OUTPUT#RUN_ID, or --run-id repeated)")
    try:
        resolved = [RunRef(r.output, resolve_run(r.output, r.run_id)[0]) for r in runs]
    except OutputError as exc:
        raise EvaluationError(str(exc)) from exc
    labels = [r.label for r in resolved]
    twice = sorted({x for x in labels if labels.count(x) > 1})
    if twice:
        raise EvaluationError(f"runs named twice: {twice}; name each run once")
    truth = list_ground_truth(gt)
    stems = common_stems(resolved, set(truth.paths), methods)
    if not stems:
        raise EvaluationError(
            f"no image with ground truth is in every run ({', '.join(labels)}); compare runs of the same images"
        )
    settings = [run_settings(r.output, r.run_id) for r in resolved]
    keys = differing(settings)
    entries, rows = [], []
    for ref, setting in zip(resolved, settings):
        metrics = evaluate_output(
            ref.output, gt, class_map, methods=methods, run_id=ref.run_id, split=split, fit_grid=fit_grid,
            tau=tau, warn=warn, stems=stems,
        )
        entries.append({"label": ref.label, "output": redact_uri(ref.output), "run_id": ref.run_id,
                        "settings": setting, "metrics": metrics})
        for method, e in metrics["methods"].items():
            rows.append({
                "run": ref.label,
                "method": method,
                "settings": {k: setting.get(k) for k in keys},
                "tau": e["tau"],
                "tau_source": e["tau_source"],
                "fit_miou": e["fit"]["fit_miou"] if e.get("fit") else None,
                "miou": e["miou"],
                "pixel_accuracy": e["pixel_accuracy"],
                "images": e["images"],
                "n_fit": e["protocol"]["n_fit"],
            })
    rows.sort(key=_rank_key)
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {
        "gt": gt,
        "class_map": class_map,
        "common_images": len(stems),
        "differing": keys,
        "ranking": rows,
        "runs": entries,
    }


def fitted_of(metrics: dict) -> dict[str, dict]:
    """The fitted.json of one run's metrics ({method: fit record}); {} when tau was not fitted."""
    return {m: e["fit"] for m, e in metrics["methods"].items() if e.get("fit")}


def winner_fits(comparison: dict) -> dict[str, dict]:
    """The fitted.json of the best row's run ({method: fit record}); {} when tau was not fitted."""
    best = comparison["ranking"][0]["run"]
    run = next(r for r in comparison["runs"] if r["label"] == best)
    return fitted_of(run["metrics"])
