"""Reads one local WebDataset shard of 5,000 img2dataset-like samples (jpg + json + txt) with
diffseg.inputs.read_source and with webdataset.WebDataset, in the same process, and prints samples/s of
each (not a test: `python tests/diffseg/inputs/bench_shard_read.py` from the repository root)."""

from __future__ import annotations

import io
import os
import sys
import tempfile
import time

import numpy as np
import webdataset as wds
from PIL import Image

sys.path.insert(0, os.getcwd())  # the working tree's diffseg, not an installed one

from diffseg.inputs import list_sources, read_source  # noqa: E402


def main(samples: int = 5000) -> None:
    folder = tempfile.mkdtemp()
    out = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG")
    with wds.ShardWriter(os.path.join(folder, "%05d.tar"), maxcount=samples, verbose=0) as sink:
        for i in range(samples):
            sink.write({"__key__": f"{i:09d}", "jpg": out.getvalue(), "json": b'{"caption": "x"}', "txt": "x"})
    (source,) = list_sources(folder)
    path = source.id.removeprefix("file://")
    start = time.perf_counter()
    ours = sum(1 for item in read_source(source) if item.error is None)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    theirs = sum(1 for _ in wds.WebDataset(path, shardshuffle=False))
    theirs_s = time.perf_counter() - start
    print(f"one local shard of {ours} samples ({os.path.getsize(path) >> 20} MiB): diffseg.inputs.read_source "
          f"{ours / ours_s:,.0f} samples/s, webdataset.WebDataset {theirs / theirs_s:,.0f} samples/s")


if __name__ == "__main__":
    main()
