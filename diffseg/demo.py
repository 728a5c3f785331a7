"""The README's first command: segment bundled sample photos with the offline tiny pipeline.

The tiny pipeline has random weights, so its masks are noise; the demo shows the whole path (decode,
one U-Net pass under capture, DiffSegmenter, label maps, overlays, statistics) without any download.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
    os.environ.setdefault(key, value)


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


def main() -> int:
    from diffseg.__main__ import main as cli

    root = Path(os.environ.get("DIFFSEG_DEMO_DIR", "demo-out"))
    images = write_sample_photos(root / "images")
    print("diffseg demo: the offline 'tiny' pipeline has RANDOM weights, so the masks below are noise.")
    print("It exercises the real code path; use --model with a Stable Diffusion checkpoint for real masks.\n")
    return cli([*images, "--vocab", "person, cat, coffee cup, rocket, sky", "--model", "tiny",
                "--resolution", "256", "--out", str(root / "masks")])


if __name__ == "__main__":
    sys.exit(main())
