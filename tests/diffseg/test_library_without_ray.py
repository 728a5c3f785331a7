"""`pip install .` without the [ray] extra gives a working library: every diffseg module imports and the
single-image command segments a photo with Ray made unimportable."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

SCRIPT = textwrap.dedent(
    """
    import importlib, pkgutil, sys

    class NoRay:
        def find_spec(self, name, path=None, target=None):
            if name == "ray" or name.startswith("ray."):
                raise ModuleNotFoundError(f"No module named {name!r} (blocked: library without the [ray] extra)")
            return None

    sys.meta_path.insert(0, NoRay())
    import diffseg
    names = [m.name for m in pkgutil.walk_packages(diffseg.__path__, "diffseg.")]
    for name in names:
        importlib.import_module(name)
    assert "ray" not in sys.modules, "a diffseg module imported ray"
    print("imported", len(names))
    from diffseg.__main__ import main
    sys.exit(main(sys.argv[1:]))
    """
)


def test_library_imports_and_segments_without_ray(tmp_path):
    photo = tmp_path / "pic.png"
    Image.fromarray(np.full((40, 56, 3), 120, dtype=np.uint8)).save(photo)
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(photo), "--vocab", "cat, dog", "--model", "tiny",
         "--resolution", "64", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split("imported", 1)[1].split()[0]) >= 20  # the whole package, lake/ and eval/ included
    stats = json.loads(next(out.glob("pic*.json")).read_text())
    labels = Image.open(next(out.glob("pic*.labels.png")))
    assert labels.size == (56, 40)  # the label map at the photo's own size
    assert stats["vocabulary"] == ["cat", "dog"] and (stats["width"], stats["height"]) == (56, 40)
    assert sum(c["pixel_count"] for c in stats["classes"]) == int((np.asarray(labels) > 0).sum())
