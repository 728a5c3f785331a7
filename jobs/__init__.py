"""Ray entry points for diffseg: argument parsing, configuration and Ray Data wiring (no algorithms).

- ``python -m jobs.segment``: segment an image lake into Parquet masks, statistics and errors.
  :mod:`jobs.segment` parses arguments; :mod:`jobs.runner` runs one invocation (checks, done set,
  units, summary; its Ray part, :mod:`jobs.run_ray`, serves both jobs, as :mod:`jobs.cli` serves both
  entry points); :mod:`jobs.pipeline` wires Ray Data; :mod:`jobs.udf` holds the decode tasks and the
  model actor; :mod:`jobs.writer` commits units; :mod:`jobs.units`, :mod:`jobs.store`,
  :mod:`jobs.tables`, :mod:`jobs.manifest`, :mod:`jobs.inputs`, :mod:`jobs.config` are the pieces.
- ``python -m jobs.synthesize``: SeeDiff (image, mask) pairs from class names (docs/synthesize.md);
  it reuses the segment job's units, writer and commit markers through a table set (:mod:`jobs.synth_*`).
- ``python -m jobs.evaluate`` / ``python -m jobs.report``: mIoU with fitted thresholds; a static HTML
  report (docs/evaluation.md). ``python -m jobs.bench``: benchmarks (docs/benchmarks.md).
- Readers that need exactness while a run is in flight use :func:`jobs.units.read_committed`.
- docs/job.md explains operating the job.
"""
