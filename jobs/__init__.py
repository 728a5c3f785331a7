"""Ray entry points for diffseg: argument parsing, configuration and Ray Data wiring (no algorithms).

- ``python -m jobs.segment``: segment an image lake into Parquet masks, statistics and errors.
  :mod:`jobs.segment` parses arguments; :mod:`jobs.runner` runs one invocation (checks, done set,
  units, summary); :mod:`jobs.pipeline` wires Ray Data; :mod:`jobs.udf` holds the decode tasks and the
  model actor; :mod:`jobs.writer` commits units; :mod:`jobs.units`, :mod:`jobs.store`,
  :mod:`jobs.tables`, :mod:`jobs.manifest`, :mod:`jobs.inputs`, :mod:`jobs.config` are the pieces.
- Readers that need exactness while a run is in flight use :func:`jobs.units.read_committed`.
- docs/job.md explains operating the job.
"""
