"""Ray entry points for diffseg: argument parsing, configuration and Ray Data wiring (no algorithms).

- ``python -m jobs.segment``: segment an image lake into Parquet masks, statistics and errors
  (:mod:`jobs.segment`; the pieces it wires live in :mod:`jobs.inputs`, :mod:`jobs.units`,
  :mod:`jobs.udf`, :mod:`jobs.tables`, :mod:`jobs.manifest`).
- Readers that need exactness while a run is in flight use :func:`jobs.units.read_committed`.
"""
