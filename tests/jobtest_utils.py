"""Helpers of the job tests: test images, reading and checking the job's outputs, process handling."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import time
from collections import Counter

import numpy as np
from PIL import Image

MAX_PIXELS = 1_000_000  # the jobs' --max-pixels in these tests, so an "over the limit" image stays small
RESOLUTION = 128  # the tiny model's input side in these tests (fast on CPU)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- images


def encode(array: np.ndarray | Image.Image, fmt: str, **kwargs) -> bytes:
    image = array if isinstance(array, Image.Image) else Image.fromarray(array)
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def good_images(photos: dict) -> dict[str, tuple[bytes, tuple[int, int]]]:
    """name -> (file bytes, (H, W) the label map must have) for inputs that must be segmented."""
    h, w = 200, 300
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display: stored 300x200 becomes 200 wide, 300 high
    gradient = np.linspace(0, 65535, h * w, dtype=np.uint16).reshape(h, w)
    palette = Image.fromarray(photos["chelsea"]).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    frames = [Image.fromarray(photos["coffee"][:120, :160]), Image.fromarray(photos["rocket"][:120, :160])]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return {
        "astronaut.jpg": (encode(photos["astronaut"], "JPEG", quality=90), (512, 512)),
        "coffee.png": (encode(photos["coffee"], "PNG"), (400, 600)),
        "chelsea.JPG": (encode(photos["chelsea"], "JPEG"), (300, 451)),
        "sub/rocket.jpeg": (encode(photos["rocket"], "JPEG"), (427, 640)),
        "odd/one_pixel.png": (encode(np.full((1, 1, 3), 200, np.uint8), "PNG"), (1, 1)),
        "odd/gray16.png": (encode(Image.fromarray(gradient), "PNG"), (h, w)),
        "odd/cmyk.jpg": (encode(Image.fromarray(photos["coffee"]).convert("CMYK"), "JPEG"), (400, 600)),
        "odd/palette_alpha.png": (encode(palette, "PNG"), (300, 451)),
        "odd/gray.png": (encode(photos["astronaut"][:, :, 0], "PNG"), (512, 512)),
        "odd/exif_rotated.jpg": (encode(photos["rocket"][:h, :w], "JPEG", exif=exif), (w, h)),
        "odd/animated.gif": (gif.getvalue(), (120, 160)),
    }


def bad_images(photos: dict) -> dict[str, tuple[bytes, str]]:
    """name -> (file bytes, a word the decode error message must contain)."""
    jpeg = encode(photos["astronaut"], "JPEG")
    png = bytearray(encode(photos["coffee"], "PNG"))
    png[len(png) // 2 : len(png) // 2 + 64] = bytes(64)  # breaks the image data (and its CRC)
    huge = encode(np.zeros((1000, 1100, 3), np.uint8), "PNG")  # 1.1 M pixels > MAX_PIXELS
    return {
        "bad/corrupt.png": (bytes(png), "corrupt"),
        "bad/truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "bad/zero_bytes.jpg": (b"", "empty"),
        "bad/not_an_image.png": (b"%PDF-1.4 this is a document, not a picture\n" * 20, "not a recognised image"),
        "bad/huge.png": (huge, "over the limit"),
    }


# ---------------------------------------------------------------- processes


def pids_matching(text: str) -> list[int]:
    """Processes whose command line contains `text` (Linux /proc; psutil is not a dependency)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd:
            out.append(int(entry))
    return out


def pids_with_env(key: str, value: str) -> list[int]:
    """Processes whose environment has key=value. Give a process tree a unique marker variable and this
    finds all of it, daemons and setproctitle'd Ray workers included, and nothing of anyone else's."""
    marker = f"{key}={value}".encode()
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if marker in f.read().split(b"\0"):
                    out.append(int(entry))
        except OSError:
            continue
    return out


def descendants(roots: list[int]) -> set[int]:
    """`roots` and every process below them (by parent pid)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ppid = parent_pid(int(entry))
            if ppid is not None:
                children.setdefault(ppid, []).append(int(entry))
    tree, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid not in tree:
            tree.add(pid)
            stack.extend(children.get(pid, []))
    return tree


def stop_process_tree(key: str, value: str, timeout: float = 5.0) -> None:
    """Stops every process carrying the marker key=value and everything they started.

    Ray's workers and agents rename themselves (setproctitle), which blanks their /proc environ, so they
    are found as children of the marked daemons (raylet) and must be collected before those stop.
    """
    for _ in range(3):
        pids = [p for p in descendants(pids_with_env(key, value)) if _alive(p) and p != os.getpid()]
        if not pids:
            return
        kill_pids(pids, timeout)


def parent_pid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def kill_pids(pids: list[int], timeout: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still alive after `timeout` seconds."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(os.path.exists(f"/proc/{p}") and _alive(p) for p in pids):
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- outputs


def put_files(base: str, files: dict[str, bytes]) -> list[str]:
    """Writes {relative name: bytes} under `base` (local folder or s3:// prefix); returns their URIs."""
    from fsspec.core import url_to_fs

    from diffseg.inputs import full_uri

    fs, root = url_to_fs(base)
    uris = []
    for name, data in files.items():
        path = f"{root.rstrip('/')}/{name}"
        if "://" not in base:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        fs.pipe_file(path, data)
        uris.append(full_uri(fs, path))
    return sorted(uris)


def read_output(output: str, table: str):
    """A plain read of OUTPUT/<table>/ with pyarrow.dataset (what DuckDB/pandas users do)."""
    import pyarrow.dataset as pads
    from fsspec.core import url_to_fs

    fs, root = url_to_fs(output)
    return pads.dataset(f"{root.rstrip('/')}/{table}", filesystem=fs, format="parquet").to_table()


def check_exactly_once(output: str, expected_uris: list[str], methods=("diffsegmenter",), run_id=None) -> dict:
    """Asserts every expected URI is in exactly one of masks (once per method) or errors, with nothing
    else there; returns {"masks": table, "stats": table, "errors": table} (of `run_id` when given)."""
    import pyarrow.compute as pc

    tables = {t: read_output(output, t) for t in ("masks", "stats", "errors")}
    if run_id is not None:
        for t in ("masks", "errors"):
            tables[t] = tables[t].filter(pc.equal(tables[t]["run_id"], run_id))
    masks, errors = tables["masks"], tables["errors"]
    per_method = Counter(zip(masks["uri"].to_pylist(), masks["method"].to_pylist()))
    error_uris = Counter(errors["uri"].to_pylist())
    assert max(per_method.values(), default=1) == 1, "a (uri, method) has several mask rows"
    assert max(error_uris.values(), default=1) == 1, "a uri has several error rows"
    for uri in expected_uris:
        in_masks = [per_method.get((uri, m), 0) for m in methods]
        if uri in error_uris:
            assert in_masks == [0] * len(methods), f"{uri} is in errors and in masks"
        else:
            assert in_masks == [1] * len(methods), f"{uri} is missing from masks ({in_masks}) and errors"
    seen = {u for u, _ in per_method} | set(error_uris)
    assert seen == set(expected_uris), f"unexpected URIs: {sorted(seen ^ set(expected_uris))[:5]}"
    return tables


def check_masks_and_stats(tables: dict, expected_sizes: dict[str, tuple[int, int]]) -> None:
    """Label maps decode to their original sizes; stats RLEs decode (pycocotools) to the label map's pixels."""
    import pycocotools.mask as mask_utils

    from diffseg.codecs.masks import decode_label_png

    stats = tables["stats"].to_pylist()
    by_key: dict[tuple[str, str], list[dict]] = {}
    for row in stats:
        by_key.setdefault((row["uri"], row["method"]), []).append(row)
    for row in tables["masks"].to_pylist():
        labels = decode_label_png(row["label_map_png"])
        assert labels.shape == (row["height"], row["width"]) == expected_sizes[row["uri"]], row["uri"]
        class_rows = by_key.get((row["uri"], row["method"]), [])
        assert sorted(r["class_name"] for r in class_rows) == sorted(row["classes"])
        for stat in class_rows:
            decoded = mask_utils.decode({"size": stat["rle_size"], "counts": stat["rle_counts"]})
            assert decoded.shape == labels.shape
            assert int(decoded.sum()) == stat["pixel_count"] == int((labels == stat["class_id"]).sum())


def kill_job_after_commits(argv: list[str], output, log_path, min_commits: int = 2, timeout: float = 240) -> int:
    """Runs a job command (`argv` after the interpreter and -m) in its own session with its own Ray
    runtime, SIGKILLs it once `min_commits` units of run 'default' are committed, stops the Ray
    processes it left, and returns how many units were committed (whole markers: a marker cut short by
    the kill is a hidden temporary, not counted). Fails if the job ends first."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ray_tmp = f"/tmp/rk{os.getpid()}{int(time.time() * 1000) % 100000}"  # short: Ray's socket paths have a length limit
    os.makedirs(ray_tmp)
    marker = os.path.basename(ray_tmp)
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_ADDRESS="",
               DIFFSEG_TEST_PROCESS_TREE=marker)  # inherited by the job's Ray processes: how we stop them
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if committed_units(str(output)) >= min_commits:
                break
            time.sleep(0.05)
        assert proc.poll() is None, Path(log_path).read_text()[-3000:]
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        stop_process_tree("DIFFSEG_TEST_PROCESS_TREE", marker)  # the killed job's Ray runtime
        shutil.rmtree(ray_tmp, ignore_errors=True)
        log.close()
    return committed_units(str(output))


def run_main(main, capsys, *argv) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a command's ``main(argv)``; argparse's SystemExit counts as its code."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


def signal_job_after_commits(argv: list[str], output, log_path, sig: int, min_commits: int = 1,
                             timeout: float = 240, wait_s: float = 60) -> tuple[int, int, float, str]:
    """Runs a job command like :func:`kill_job_after_commits`, sends `sig` to the job's process only (as
    Kubernetes does to a container's first process) once `min_commits` units are committed, and waits up to
    `wait_s` for it to exit. Returns (exit code or None, units committed, seconds from the signal to the
    exit, the Ray processes it left alive, as "pid cmd" lines; they are stopped afterwards)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    ray_tmp = f"/tmp/rs{os.getpid()}{int(time.time() * 1000) % 100000}"
    os.makedirs(ray_tmp)
    marker = os.path.basename(ray_tmp)
    env = dict(os.environ, RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="disabled", RAY_ADDRESS="",
               DIFFSEG_TEST_PROCESS_TREE=marker)
    log = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, "-m", *argv], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    left = ""
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and committed_units(str(output)) < min_commits:
            time.sleep(0.05)
        assert proc.poll() is None, Path(log_path).read_text()[-3000:]
        sent = time.monotonic()
        os.kill(proc.pid, sig)
        try:
            code = proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            code = None
        elapsed = time.monotonic() - sent
        time.sleep(1.0)  # what the job's own shutdown stops takes a moment to go
        alive = pids_with_env("DIFFSEG_TEST_PROCESS_TREE", marker)
        left = "\n".join(f"{pid} {_cmdline(pid)}" for pid in alive)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        stop_process_tree("DIFFSEG_TEST_PROCESS_TREE", marker)
        shutil.rmtree(ray_tmp, ignore_errors=True)
        log.close()
    return code, committed_units(str(output)), elapsed, left


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:120]
    except OSError:
        return "?"


def committed_units(output: str, run_id: str = "default") -> int:
    """Units named by the commit entries of a run's log (local or object storage; whole entries only)."""
    from diffseg.lake.store import OutputStore

    store = OutputStore(output)
    units = 0
    for data in store.get_many([r for r in store.list(f"_log/{run_id}")
                                if not r.rsplit("/", 1)[1].startswith((".", "_"))]).values():
        if isinstance(data, Exception):
            continue
        entry = json.loads(data)
        units += len(entry.get("units", ())) if entry.get("kind") == "commit" else 0
    return units
