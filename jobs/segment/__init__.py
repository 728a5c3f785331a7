"""`python -m jobs.segment`: segment an image lake with Ray (docs/job.md)."""
