"""The README's first command (`make demo`): the Ray job on a local image lake, offline.

It writes scikit-image's bundled photographs (and one file that is not an image, to show an error
row) into ``demo-out/lake/``, runs ``python -m jobs.segment`` on a local Ray runtime with the offline
``tiny`` pipeline and two methods from one forward, then renders the HTML report. The tiny pipeline
has random weights, so its masks are noise: the demo shows the whole path (listing, decoding on CPU
tasks, the actor pool, one U-Net pass under capture, the methods, Parquet outputs, exactly-once
commits, the report) without any download. Run it twice: the second run finds nothing to do.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# No HF_HUB_OFFLINE: the tiny model is built in code and checkpoints load from a folder or object storage,
# never from a hub (setting it would only break `datasets.load_dataset("parquet", data_files="s3://...")`).
# RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 is Ray's loopback mode: the demo's local runtime binds to 127.0.0.1.
for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "AWS_EC2_METADATA_DISABLED": "true",
                   "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}.items():
    os.environ.setdefault(key, value)

VOCAB = "person, cat, coffee cup, rocket, sky"


def write_sample_photos(folder: Path) -> list[str]:
    """Writes scikit-image's bundled photographs as JPEG/PNG files; returns their paths."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, ext in (("astronaut", "jpg"), ("coffee", "jpg"), ("chelsea", "png"), ("rocket", "jpg")):
        path = folder / f"{name}.{ext}"
        if not path.exists():
            Image.fromarray(getattr(data, name)()).save(path)
        paths.append(str(path))
    return paths


def write_lake(folder: Path) -> list[str]:
    """The demo's lake: the four photographs and one file that is not an image (an error row)."""
    paths = write_sample_photos(folder)
    (folder / "not-an-image.jpg").write_bytes(b"this file is text, not a JPEG")
    return [*paths, str(folder / "not-an-image.jpg")]


def shown(path) -> str:
    """`path` as the user would type it here: relative to the working directory when inside it."""
    path = os.path.abspath(path)
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def main() -> int:
    from jobs.report.cli import main as report
    from jobs.segment.cli import main as segment

    root = Path(os.environ.get("DIFFSEG_DEMO_DIR", "demo-out")).resolve()
    lake, output = root / "lake", root / "output"
    write_lake(lake)
    banner = ("diffseg demo: the offline 'tiny' pipeline has RANDOM weights, so the masks are NOISE.\n"
              "It runs the real job end to end; pass --model with a Stable Diffusion checkpoint for real masks.")
    print(banner + "\n", flush=True)
    code = segment([str(lake), str(output), "--vocab", VOCAB, "--model", "tiny", "--resolution", "256",
                    "--method", "diffsegmenter", "--method", "seediff", "--batch-size", "2",
                    "--max-error-fraction", "0.5", "--num-cpus", "2", "--object-store-mb", "256", "-q"])
    if code != 0:
        return code
    report([str(output), "--out", str(root / "report.html")])
    print(f"\n{banner}\n")
    print(f"outputs:  {shown(output)}/masks, stats, errors (Parquet) and manifest.json")
    print(f"report:   {shown(root / 'report.html')} (open it in a browser)")
    print(f"read it:  {shown(sys.executable)} -c \"import pandas as pd; print(pd.read_parquet('{shown(output)}/stats'))\"")
    print("next:     README.md, 'After the demo': read the tables, export, submit to a Ray cluster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
