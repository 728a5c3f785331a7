"""Evaluate a segment job's OUTPUT against ground truth: the whole evaluation as one function on values.

:func:`evaluate_output` is what ``python -m jobs.evaluate`` runs: it resolves the run, maps the
vocabulary to ground-truth ids, matches predictions to ground truth by stem, splits them
(:mod:`diffseg.eval.protocol`), fits or applies the background threshold and returns the result dict
that is ``metrics.json``. It writes nothing.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

from diffseg.eval.class_maps import lut_for
from diffseg.eval.errors import EvaluationError
from diffseg.eval.fitted import read_fitted
from diffseg.eval.ground_truth import IGNORE_INDEX, list_ground_truth
from diffseg.eval.metrics import ConfusionMatrix, iou_per_class
from diffseg.eval.predictions import (
    Predictions,
    index_masks,
    load_predictions,
    names_segments,
    segment_naming_methods,
    stems_to_uris,
)
from diffseg.eval.protocol import (
    Protocol,
    Split,
    choose_tau,
    json_number,
    make_protocol,
    pad_confusion,
    sweep,
)
from diffseg.lake.read import OutputError, resolve_run
from diffseg.model import redact_uri


def evaluate_split(
    preds: Predictions, stems: set[str], tau: float | None
) -> tuple[ConfusionMatrix, ConfusionMatrix | None]:
    """(cm of the evaluated labels, cm of the job's own labels when `tau` relabels them, else None).

    tau None: the job's label maps are evaluated; else label = argmax over [tau, s_1..s_K] of the
    saved scores at the ground truth's size.
    """
    size = int(preds.lut.max()) + 1
    evaluated = ConfusionMatrix(size, IGNORE_INDEX)
    as_run = ConfusionMatrix(size, IGNORE_INDEX) if tau is not None else None
    for gt, row in preds.pairs(stems):
        job = preds.job_labels(row, gt.shape)
        if tau is None:
            evaluated.update(job, gt)
            continue
        fg_score, fg_label = preds.foreground(row, gt.shape)
        evaluated.update(np.where(fg_score > tau, preds.lut[fg_label], preds.lut[0]), gt)
        as_run.update(job, gt)
    return evaluated, as_run


def _summary(cm: ConfusionMatrix) -> dict:
    return {"images": cm.images, "miou": json_number(cm.miou()), "pixel_accuracy": json_number(cm.accuracy())}


def evaluate_method(
    preds: Predictions,
    protocol: Protocol,
    run: dict,
    *,
    fit_grid: np.ndarray | None = None,
    tau: float | None = None,
    fitted: dict[str, dict] | None = None,
    fitted_uri: str = "fitted.json",
    warn: Callable[[str], None] | None = None,
) -> dict:
    """One method's entry of metrics.json.

    tau comes from at most one of: fitting over `fit_grid` on protocol.fit, the given `tau`, or the
    `fitted` records (read_fitted of `fitted_uri`; their fit stems are then left out of protocol.eval);
    with none, the job's own labels are evaluated. run: {"run_id", "vocab_hash"} (fit provenance).
    `warn` is called with a message when `fitted` was fitted on another vocabulary.
    """
    method = preds.method
    entry: dict = {}
    source = "job"
    if fit_grid is not None:
        if not protocol.fit:
            raise EvaluationError(
                f"method {method!r}: the fit split is empty; give --fit-split or a larger --holdout share"
            )
        tau, fit_miou, curve = choose_tau(fit_grid, sweep(preds.scored(protocol.fit), fit_grid, preds.lut))
        source = "fit"
        entry["fit"] = {
            "method": method,
            "param": "tau",
            "tau": tau,
            "fit_miou": fit_miou,
            "n_fit": len(protocol.fit),
            "grid": [float(t) for t in fit_grid],
            "curve": curve,
            "run_id": run["run_id"],
            "vocab_hash": run["vocab_hash"],
            "fit_stems": sorted(protocol.fit),
        }
    elif tau is not None:
        source = "given"
    elif fitted:
        if method not in fitted:
            raise EvaluationError(
                f"{redact_uri(fitted_uri)} holds no fitted tau for method {method!r} (it has {sorted(fitted)})"
            )
        record = fitted[method]
        if record.get("vocab_hash") not in (None, run["vocab_hash"]):
            (warn or warnings.warn)(
                f"{redact_uri(fitted_uri)} was fitted on another vocabulary ({record['vocab_hash']})"
            )
        tau, source = float(record["tau"]), "fitted"
        before = len(protocol.eval)
        protocol.eval -= set(record.get("fit_stems", ()))  # never report on the images tau was fitted on
        protocol.excluded_fitted = before - len(protocol.eval)
    if not protocol.eval:
        raise EvaluationError(
            f"method {method!r}: the eval split is empty (no matched image left to report on)"
        )
    cm, as_run = evaluate_split(preds, protocol.eval, tau)
    entry.update(
        {
            "tau": tau,
            "tau_source": source,
            **_summary(cm),
            "iou": [json_number(x) for x in iou_per_class(cm.cm)],
            "confusion_matrix": cm.cm.tolist(),
            "as_run": _summary(as_run) if as_run is not None else None,
            "protocol": {
                "split": protocol.kind,
                "holdout": protocol.holdout,
                "seed": protocol.seed,
                "n_fit": len(protocol.fit),
                "n_eval": len(protocol.eval),
                "excluded_fitted": protocol.excluded_fitted,
            },
        }
    )
    return entry


def evaluate_output(
    output: str,
    gt: str,
    class_map: str,
    *,
    methods: list[str] | None = None,
    run_id: str | None = None,
    split: Split | None = None,
    fit_grid: np.ndarray | None = None,
    tau: float | None = None,
    fitted_uri: str | None = None,
    warn: Callable[[str], None] | None = None,
    stems: set[str] | None = None,
) -> dict:
    """The result dict (metrics.json) of evaluating OUTPUT's run against the ground truth below `gt`.

    output, gt: local paths or fsspec URLs (OUTPUT of jobs.segment; a prefix of PNG label maps).
    class_map: a class map file (path or URL) or a built-in benchmark name (``voc21``, ``context60``,
    ``coco_object``; :func:`diffseg.eval.class_maps.lut_for`). stems: evaluate only these image stems
    (default: every image with ground truth; a comparison passes the images all its runs have). methods: default every evaluable method of the run. run_id: default the
    latest invocation's. split: FIT/EVAL stems or holdout (:class:`Split`; default none). At most one of fit_grid
    (fit tau over these thresholds on FIT), tau (apply it) and fitted_uri (apply a fitted.json).
    Raises EvaluationError naming what to fix.
    """
    if sum(x is not None for x in (fit_grid, tau, fitted_uri)) > 1:
        raise EvaluationError("give at most one of fit_grid, tau and fitted_uri (--fit, --tau, --fitted)")
    try:
        run_id, vocabulary, _ = resolve_run(output, run_id)
    except OutputError as exc:
        raise EvaluationError(str(exc)) from exc
    lut, gt_names = lut_for(class_map, vocabulary)
    truth = list_ground_truth(gt)
    try:
        fitted = read_fitted(fitted_uri) if fitted_uri else {}
    except ValueError as exc:
        raise EvaluationError(str(exc)) from exc

    index = index_masks(output, run_id)
    if len(index.vocab_hashes) > 1:
        raise EvaluationError(
            f"OUTPUT holds runs with different vocabularies ({index.vocab_hashes}); pick one with --run-id"
        )
    available = index.uris_by_method
    methods = methods or [m for m in sorted(available) if not names_segments(m)]
    wrong = [m for m in methods if m not in available or names_segments(m)]
    if wrong:
        raise EvaluationError(
            f"cannot evaluate methods {wrong}: OUTPUT has {sorted(available)} "
            f"({', '.join(segment_naming_methods())} names segments, not classes)"
        )

    result = {
        "output": output,
        "run_id": run_id,
        "gt": gt,
        "class_map": class_map,
        "vocabulary": vocabulary,
        "vocab_hash": index.vocab_hashes[0],
        "model": index.model,
        "ignore_index": IGNORE_INDEX,
        "methods": {},
    }
    for method in methods:
        uri_of = stems_to_uris(available[method])
        preds = load_predictions(output, run_id, method, uri_of, truth, lut)
        matched = set(preds.row_of) if stems is None else set(preds.row_of) & set(stems)
        if not matched:
            raise EvaluationError(f"method {method!r} of run {run_id!r} has none of the images to compare on")
        entry = evaluate_method(
            preds,
            make_protocol(matched, split or Split(), fit_grid is not None),
            result,
            fit_grid=fit_grid,
            tau=tau,
            fitted=fitted,
            fitted_uri=fitted_uri or "fitted.json",
            warn=warn,
        )
        entry["matching"] = {
            "predictions": len(uri_of),
            "ground_truth": len(truth.paths),
            "matched": len(matched),
            "predictions_without_gt": sorted(set(uri_of) - matched)[:20],
            "gt_without_prediction": len(set(truth.paths) - set(uri_of)),
        }
        result["methods"][method] = entry
    # one class list for all methods, covering every id the class map names (absent ones: IoU None)
    n = max(max(len(e["iou"]) for e in result["methods"].values()), max(gt_names) + 1)
    for e in result["methods"].values():
        e["iou"] += [None] * (n - len(e["iou"]))
        e["confusion_matrix"] = pad_confusion(np.array(e["confusion_matrix"]), n).tolist()
    result["classes"] = [
        {"id": i, "name": gt_names.get(i, f"class {i}"), "in_class_map": i in gt_names} for i in range(n)
    ]
    return result
