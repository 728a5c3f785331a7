"""Evaluation: metrics, the fit/eval protocol, class maps and fitted thresholds."""
