"""Ray entry points for diffseg: argument parsing, Ray Data wiring and actors (no algorithms).

Each job is a package with ``__main__`` (``python -m jobs.NAME``) and its few modules:

- ``jobs.segment``: segment an image lake into Parquet masks, statistics and errors (docs/job.md);
- ``jobs.synthesize``: SeeDiff (image, mask) pairs from class names (docs/synthesize.md);
- ``jobs.evaluate`` / ``jobs.report``: mIoU with fitted thresholds; a static HTML report (docs/evaluation.md);
- ``jobs.bench``: benchmarks (docs/benchmarks.md); ``jobs.demo``: the README's ``make demo``.

``jobs.common`` holds what the two Ray jobs share (options and checks, Ray init and sizing, the runner,
the actor base class ``ModelActor``). Everything
that works without Ray (the lake layer: store, inputs, units and commits, schemas, manifest) lives in
``diffseg.lake``.
"""
