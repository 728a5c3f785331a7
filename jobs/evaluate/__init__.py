"""`python -m jobs.evaluate`: mIoU with fitted thresholds (docs/evaluation.md)."""
