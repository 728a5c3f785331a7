"""`python -m jobs.synthesize`: SeeDiff (image, mask) pairs from class names (docs/synthesize.md)."""
