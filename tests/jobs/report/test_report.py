"""jobs.report: the HTML page renders in headless Chromium with every image loaded, names the classes and
the error reasons, and samples and paginates large outputs deterministically."""

from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from diffseg.codecs.masks import encode_label_png
from diffseg.codecs.stats import compute_class_stats
from diffseg.lake.schemas import SCHEMAS
from diffseg.lake.store import OutputStore
from diffseg.lake.units import Unit, unit_id_of, write_unit
from jobs.report.cli import main
from jobs.report.gallery import sample_uris

VOCAB = ["cat", "dog", "potted plant"]
METHODS = ["diffsegmenter", "seediff"]
ERROR_MESSAGE = "cannot decode image 'broken.jpg': image file is truncated (<42 bytes>)"


def chromium() -> str:
    """Debian's chromium; the test fails (not skips) without it: `make install` installs it."""
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "headless Chromium is needed to check the report renders: install Debian's chromium package "
        "(`apt-get update && apt-get install -y chromium` as root, or `make install`)"
    )


def headless_chromium(html_path, tmp_path, *flags: str) -> subprocess.CompletedProcess:
    """Chromium run headless (no network, a private profile) on `html_path` with `flags`; asserts it exits 0."""
    cmd = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        *flags,
        html_path.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(html_path, tmp_path) -> str:
    """The DOM after the page's scripts ran (virtual time lets the image-load check settle)."""
    return headless_chromium(html_path, tmp_path, "--virtual-time-budget=10000", "--dump-dom").stdout


def label_map(h: int, w: int, seed: int) -> np.ndarray:
    """Blocks of classes 0..3 (0 = background) so every overlay has several colours."""
    rng = np.random.default_rng(seed)
    cells = rng.integers(0, len(VOCAB) + 1, (4, 4))
    return np.kron(cells, np.ones((h // 4 + 1, w // 4 + 1), np.int64))[:h, :w].astype(np.uint8)


def write_output(
    root,
    images: dict[str, tuple[int, int]],
    errors: list[dict] = (),
    labels: dict[str, np.ndarray] | None = None,
) -> str:
    """A committed OUTPUT: one mask row per (image, method), its stats rows, the error rows, a manifest.
    An image's label map is `labels[uri]` when given (for every method), else random blocks."""
    masks, stats = [], []
    for i, (uri, (h, w)) in enumerate(sorted(images.items())):
        for j, method in enumerate(METHODS):
            label = labels[uri] if uri in (labels or {}) else label_map(h, w, seed=10 * i + j)
            rows = compute_class_stats(label, VOCAB)
            masks.append(
                {
                    "uri": uri,
                    "width": w,
                    "height": h,
                    "method": method,
                    "label_map_png": encode_label_png(label),
                    "classes": [r["class_name"] for r in rows],
                    "scores_png": None,
                    "run_id": "r1",
                    "model": "tiny",
                    "vocab_hash": "h",
                }
            )
            stats += [{"uri": uri, "method": method, **r} for r in rows]
    uris = sorted(set(images) | {e["uri"] for e in errors})
    tables = {
        "masks": pa.Table.from_pylist(masks, schema=SCHEMAS["masks"]),
        "stats": pa.Table.from_pylist(stats, schema=SCHEMAS["stats"]),
        "errors": pa.Table.from_pylist([{"run_id": "r1", **e} for e in errors], schema=SCHEMAS["errors"]),
    }
    store = OutputStore(str(root))
    write_unit(store, "r1", Unit(unit_id_of(uris), tuple(uris)), tables)
    store.put_json(
        "manifest.json",
        {
            "run_id": "r1",
            "status": "finished",
            "model": {"uri": "tiny"},
            "vocabulary": {"classes": VOCAB, "hash": "h"},
            "counts": {"images": len(uris)},
        },
    )
    return str(root)


@pytest.fixture
def small_output(tmp_path, sample_photos):
    """Two readable photos, one image whose original is gone, one error row."""
    images = {}
    for name in ("chelsea", "coffee"):
        path = tmp_path / "lake" / f"{name}.jpg"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(sample_photos[name]).save(path, quality=90)
        images[path.as_uri()] = sample_photos[name].shape[:2]
    images[(tmp_path / "lake" / "gone.jpg").as_uri()] = (120, 200)
    errors = [
        {
            "uri": (tmp_path / "lake" / "broken.jpg").as_uri(),
            "stage": "decode",
            "error_type": "ImageDecodeError",
            "message": ERROR_MESSAGE,
        }
    ]
    return write_output(tmp_path / "out", images, errors)


def test_report_renders_in_chromium_with_all_images_loaded(tmp_path, small_output):
    out = tmp_path / "report.html"
    assert main([small_output, "--out", str(out), "--per-page", "2"]) == 0
    html = out.read_text()
    assert "http://" not in html and "https://" not in html  # nothing fetched from the network

    dom = dump_dom(out, tmp_path)
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body))
    assert attrs["images-expected"] == "6"  # 3 images x 2 methods
    assert attrs["images-total"] == "6" and attrs["images-loaded"] == "6" and attrs["images-broken"] == "0"
    # two pages of 2 cards: the script shows only the first
    assert re.findall(r'class="page( on)?" id="page-(\d)"', dom) == [(" on", "1"), ("", "2")]
    # two originals were read and blended (JPEG); the missing one is shown as a colour label map (PNG)
    assert dom.count('src="data:image/jpeg') == 4 and dom.count('src="data:image/png') == 2
    assert "gone.jpg" in dom and "(original not readable here)" in dom
    # error row with its reason (escaped, not parsed as markup), classes in the legend and the tables
    assert "broken.jpg" in dom and "ImageDecodeError" in dom and "decode" in dom
    assert "image file is truncated (&lt;42 bytes&gt;)" in dom
    for name in VOCAB:
        assert name in dom
    assert 'id="classes"' in dom and dom.count('<svg class="hist"') == len(VOCAB) * len(METHODS)
    assert '"status": "finished"' in dom  # the manifest
    assert "random weights: these masks are meaningless" in dom  # the tiny model says so plainly


def test_screenshot_is_not_blank(tmp_path, small_output):
    out = tmp_path / "report.html"
    main([small_output, "--out", str(out)])
    shot = tmp_path / "shot.png"
    flags = (
        "--hide-scrollbars",
        "--window-size=1280,1000",
        "--virtual-time-budget=5000",
        f"--screenshot={shot}",
    )
    done = headless_chromium(out, tmp_path, *flags)
    assert shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (1000, 1280)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # photos and overlays, not an empty page


def test_large_output_is_sampled_deterministically_and_paginated(tmp_path):
    images = {f"s3://lake/img{i:03d}.jpg": (24, 32) for i in range(60)}
    output = write_output(tmp_path / "out", images)
    pages = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        out = tmp_path / f"{name}.html"
        assert (
            main(
                [
                    output,
                    "--out",
                    str(out),
                    "--max-images",
                    "10",
                    "--per-page",
                    "4",
                    "--seed",
                    str(seed),
                    "--no-originals",
                ]
            )
            == 0
        )
        pages.append(out.read_text())
    assert pages[0] == pages[1]  # same seed, same page
    shown = sorted(set(re.findall(r'title="(s3://lake/img\d+\.jpg)"', pages[0])))
    assert shown == sample_uris(images, 10, 0) and len(shown) == 10
    assert shown != sorted(set(re.findall(r'title="(s3://lake/img\d+\.jpg)"', pages[2])))
    assert pages[0].count("<figure>") == 10 * len(METHODS)
    assert len(re.findall(r'class="page" id="page-\d"', pages[0])) == 3  # 4 + 4 + 2
    assert "10 of 60 images" in pages[0] and "not read (--no-originals)" in pages[0]
    # an image's place in the sample does not depend on the others: growing the set keeps the earlier picks
    grown = sample_uris(list(images) + [f"s3://lake/new{i}.jpg" for i in range(40)], 10, 0)
    assert set(grown) - set(shown) <= {u for u in grown if "new" in u}


def test_an_image_with_no_class_is_drawn_as_background_and_the_legend_keeps_every_class(
    tmp_path, sample_photos
):
    photo = sample_photos["coffee"]  # 400 x 600
    path = tmp_path / "lake" / "coffee.jpg"
    path.parent.mkdir()
    Image.fromarray(photo).save(path, quality=95)
    images = {path.as_uri(): photo.shape[:2], (tmp_path / "lake" / "empty.jpg").as_uri(): (40, 60)}  # gone
    output = write_output(
        tmp_path / "out", images, labels={u: np.zeros(s, np.uint8) for u, s in images.items()}
    )
    out = tmp_path / "report.html"
    assert main([output, "--out", str(out), "--thumb", "60"]) == 0
    html = out.read_text()

    # the legend: background in black first, then every vocabulary class in label order in its colour
    legend = re.search(r'<div class="legend">(.*?)</div>', html).group(1)
    chips = re.findall(r'background:(#[0-9a-f]{6})"></span>([^<]*)</span>', legend)
    assert chips == [
        ("#000000", "background"),
        ("#800000", "1 cat"),
        ("#008000", "2 dog"),
        ("#808000", "3 potted plant"),
    ]
    # every figure says it found no class, and the class table counts 0 images for every class
    assert html.count('<span class="note">no class</span>') == len(images) * len(METHODS)
    assert "(0 images)" not in html and html.count(f"({len(images)} images)") == len(METHODS)
    # the pixels: no label is drawn, so the overlay is the photo itself, or black where it is unreadable
    figures = re.findall(
        r'<img src="data:(image/\w+);base64,([^"]+)" width="(\d+)" height="(\d+)" alt="([^"]*)"', html
    )
    assert len(figures) == len(images) * len(METHODS)
    for mime, data, width, height, alt in figures:
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")).astype(int)
        assert pixels.shape == (int(height), int(width), 3) == (40, 60, 3)  # --thumb 60 on the long side
        if "empty.jpg" in alt:
            assert mime == "image/png" and (pixels == 0).all()
        else:
            small = np.asarray(Image.fromarray(photo).resize((60, 40), Image.Resampling.BILINEAR)).astype(int)
            # JPEG's loss only (about 6 levels); a blended class colour would move pixels by ~alpha x 100
            assert mime == "image/jpeg" and np.abs(pixels - small).mean() < 10


def test_missing_output_is_a_clear_error(tmp_path, capsys):
    assert main([str(tmp_path / "nothing"), "--out", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("diffseg: error: ") and "manifest.json" in err and not (tmp_path / "r.html").exists()


def test_output_and_originals_on_s3(tmp_path, bucket, sample_photos):
    """OUTPUT and the original images on an S3-compatible server (moto): overlays blend the originals."""
    import io

    import fsspec

    fs = fsspec.filesystem("s3")
    images = {}
    for name in ("chelsea", "rocket"):
        buffer = io.BytesIO()
        Image.fromarray(sample_photos[name]).save(buffer, format="JPEG", quality=90)
        fs.pipe_file(f"{bucket}/lake/{name}.jpg", buffer.getvalue())
        images[f"s3://{bucket}/lake/{name}.jpg"] = sample_photos[name].shape[:2]
    output = write_output(f"s3://{bucket}/out", images)
    out = tmp_path / "report.html"
    assert main([output, "--out", str(out)]) == 0
    html = out.read_text()
    assert html.count('src="data:image/jpeg') == 2 * len(METHODS)  # every overlay blended with its original
    assert "2 shown blended with their original" in html


def test_a_rerun_with_nothing_to_do_shows_the_runs_own_status(tmp_path):
    """The header's status is the run's outcome (as `diffseg status` judges it), with the latest
    invocation's own status beside it when they differ."""
    from jobs.report.page import ReportOptions, build_report

    bad = [{"uri": "file:///nowhere/c.jpg", "stage": "decode", "error_type": "ValueError", "message": "not an image"}]
    output = write_output(tmp_path / "out", {"file:///nowhere/a.jpg": (20, 30), "file:///nowhere/b.jpg": (20, 30)}, bad)
    store = OutputStore(output)
    manifest = store.get_json("manifest.json")
    store.put_json("manifest.json", {**manifest, "status": "nothing to do", "config": {"max_error_fraction": 0.5}})
    page = build_report(output, ReportOptions(originals=False))
    assert "status <b>succeeded</b>" in page and "latest invocation <b>nothing to do</b>" in page
    store.put_json("manifest.json", {**manifest, "status": "nothing to do", "config": {"max_error_fraction": 0.1}})
    page = build_report(output, ReportOptions(originals=False))
    assert "status <b>too many errors</b>" in page  # 1 error row in 3 inputs


def test_an_older_run_is_reported_with_its_own_manifest(tmp_path):
    """--run-id of a run that is not the latest: status, model and manifest come from its own manifest
    (_history), not from manifest.json (which belongs to the latest run)."""
    from jobs.report.page import ReportOptions, build_report

    output = write_output(tmp_path / "out", {"file:///nowhere/a.jpg": (20, 30)})
    store = OutputStore(output)
    old = {**store.get_json("manifest.json"), "model": {"uri": "s3://models/old"}}
    store.put_json("_history/r1/20261130T000000Z.json", old)
    store.put_json("_runs/r1.json", {"run_id": "r1", "identity": {"model": "s3://models/old"}, "classes": VOCAB})
    store.put_json("manifest.json", {"run_id": "r2", "status": "failed", "model": {"uri": "s3://models/new"},
                                     "vocabulary": {"classes": ["other"], "hash": "h2"}})
    page = build_report(output, ReportOptions(run_id="r1", originals=False))
    assert "latest invocation <b>finished</b>" in page and "model <b>s3://models/old</b>" in page
    assert "s3://models/new" not in page and "failed" not in page


def test_a_mask_stored_at_the_argmax_size_is_drawn_at_the_photos_size():
    """The job stores big photos' maps at the argmax size: the gallery draws them as the full map."""
    from diffseg.codecs.upscale import upscale_labels
    from jobs.report.gallery import class_colours, gallery_cards, palette

    small = label_map(15, 26, seed=3)
    full = upscale_labels(small, 41, 67)
    rows = [{"uri": uri, "width": 67, "height": 41, "method": "m", "label_map_png": encode_label_png(stored),
             "classes": []} for uri, stored in (("s3://l/full.jpg", full), ("s3://l/small.jpg", small))]
    cards = gallery_cards(pa.Table.from_pylist(rows), class_colours(VOCAB, palette(4)), {}, 67, 0.5)
    images = [re.search(r'<img src="([^"]+)" width="(\d+)" height="(\d+)"', card).groups() for card in cards]
    assert images[0] == images[1] and images[0][1:] == ("67", "41")
