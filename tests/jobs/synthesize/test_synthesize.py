"""``python -m jobs.synthesize``: work items and units, the actor without Ray, the option checks, and the
whole job on a local Ray runtime with the tiny model (decodable pairs, exactly once per (class, seed),
resubmission, refused settings, more seeds later, reproducibility across outputs, kill and resume)."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from jobtest_utils import read_output
from PIL import Image

from diffseg.lake.schemas import (
    SAMPLES_SCHEMA,
    SYNTH_ERRORS_SCHEMA,
    SYNTH_SCHEMAS,
    SYNTH_TABLES,
    split_samples,
)
from diffseg.lake.store import OutputStore
from diffseg.lake.units import read_committed, write_unit
from jobs.common.config import ConfigError
from jobs.synthesize.cli import build_parser, main
from jobs.synthesize.config import (
    SynthConfig,
    all_keys,
    generation_groups,
    item_key,
    make_synth_units,
    parse_key,
)

CLASSES = "cat, potted plant"
SIDE = 64  # --resolution of these tests (the tiny model at 64 px: 8x8 latents)


def config(output: str, **kw) -> SynthConfig:
    base = dict(output=output, classes=CLASSES, per_class=3, model="tiny", steps=2, resolution=SIDE, batch_size=2,
                unit_size=2)
    base.update(kw)
    return SynthConfig(**base)


def decode_png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def check_each_item_once(output: str, expected: list[tuple[str, int]]) -> dict:
    """Every (class, seed) is in exactly one row of samples or errors, and nothing else is; returns the tables."""
    tables = {t: read_output(output, t) for t in SYNTH_SCHEMAS}
    seen = Counter(zip(tables["samples"]["class_name"].to_pylist(), tables["samples"]["seed"].to_pylist()))
    seen.update(zip(tables["errors"]["class_name"].to_pylist(), tables["errors"]["seed"].to_pylist()))
    assert max(seen.values(), default=1) == 1, [k for k, n in seen.items() if n > 1]
    assert set(seen) == set(expected), sorted(set(seen) ^ set(expected))
    return tables


def check_samples(samples, side: int) -> None:
    """Images and masks decode with the asked shapes; the statistics describe the decoded mask."""
    import pycocotools.mask as mask_utils

    classes = [c.strip() for c in CLASSES.split(",")]
    for row in samples.to_pylist():
        image, mask = decode_png(row["image_png"]), decode_png(row["mask_png"])
        assert image.shape == (side, side, 3) and image.dtype == np.uint8
        assert mask.shape == (side, side) and mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert (row["width"], row["height"]) == (side, side)
        assert row["class_id"] == classes.index(row["class_name"]) + 1
        assert row["prompt"] == f"a photo of a {row['class_name']}" and row["model"] == "tiny"
        assert row["pixel_count"] == int(mask.sum()) and row["fraction"] == pytest.approx(mask.mean(), abs=1e-6)
        decoded = mask_utils.decode({"size": row["rle_size"], "counts": row["rle_counts"]})
        assert np.array_equal(decoded, mask)


# ---------------------------------------------------------------- without Ray


def test_help_lists_the_exit_codes_and_examples_that_parse_into_valid_configs(capsys):
    """What `python -m jobs.synthesize --help` prints: every option, the four exit codes, and example
    commands that a user can paste (each parses into a valid SynthConfig)."""
    import shlex

    from jobs.synthesize.cli import config_from_args

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    text = capsys.readouterr().out
    assert exc.value.code == 0
    for option in ("--classes", "--per-class", "--model", "--prompt", "--steps", "--guidance", "--resolution",
                   "--seed", "--batch-size", "--actors", "--gpus-per-actor", "--run-id", "--unit-size", "--pamr"):
        assert option in text, option
    codes = text[text.index("exit codes:"):]
    for code, words in (("0", "done"), ("1", "run failed"), ("2", "bad option"),
                        ("3", "finished but more errors than --max-error-fraction")):
        assert f"{code} {words}" in " ".join(codes.split()), code
    examples = text[text.index("examples:"):text.index("exit codes:")].replace("\\\n", " ")
    commands = [line.split("python -m jobs.synthesize ", 1)[1] for line in examples.splitlines()
                if "python -m jobs.synthesize " in line]
    assert len(commands) == 2, examples
    configs = []
    for command in commands:
        words = shlex.split(command)
        configs.append(config_from_args(build_parser().parse_args(words)))
    assert (configs[0].model, configs[0].per_class, configs[0].steps, configs[0].resolution) == ("tiny", 4, 2, 64)
    assert configs[1].output == "s3://lake/synth/" and configs[1].actors == 4 and configs[1].per_class == 1000


@pytest.mark.parametrize(
    ("change", "words"),
    [({"per_class": 0}, "--per-class"), ({"prompt": "a photo"}, "--prompt"), ({"resolution": 100}, "multiple of 64"),
     ({"steps": 0}, "--steps"), ({"guidance": 0.5}, "--guidance"), ({"unit_size": 0}, "--unit-size")],
)
def test_bad_options_are_refused_naming_the_option(change, words):
    with pytest.raises(ConfigError, match=words):
        config("out", **change)


def test_bad_option_on_the_command_line_exits_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["out", "--classes", "cat", "--per-class", "2", "--model", "tiny", "--resolution", "100"])
    assert exc.value.code == 2 and "multiple of 64" in capsys.readouterr().err


def test_units_are_one_class_seed_blocks_that_a_resume_does_not_reshape():
    names, seeds = ["cat", "potted plant"], range(0, 7)
    units = make_synth_units(names, seeds, unit_size=3)
    assert [[parse_key(k) for k in u.uris] for u in units[:3]] == [
        [("cat", 0), ("cat", 1), ("cat", 2)], [("cat", 3), ("cat", 4), ("cat", 5)], [("cat", 6)]]
    assert len(units) == 6 and len({u.unit_id for u in units}) == 6
    assert sorted(k for u in units for k in u.uris) == sorted(all_keys(names, seeds))
    assert units == make_synth_units(names, seeds, 3)  # deterministic
    # a resumed run (two units committed) gets exactly the remaining units, not a re-cut
    done = set(units[0].uris) | set(units[4].uris)
    assert make_synth_units(names, seeds, 3, done) == [u for i, u in enumerate(units) if i not in (0, 4)]
    # generation groups: one class, the seeds of one block seed // batch_size
    assert generation_groups(units[1], batch_size=2) == [("cat", [3]), ("cat", [4, 5])]
    assert parse_key(item_key("a\tb", 7)) == ("a\tb", 7) and parse_key("x\t-3") == ("x", -3)


def test_result_rows_split_into_samples_and_errors_with_exact_schemas():
    from diffseg.generate import Generated
    from diffseg.lake.schemas import synth_error
    from jobs.synthesize.actor import sample_columns

    image = np.random.default_rng(0).integers(0, 255, (SIDE, SIDE, 3), dtype=np.uint8)
    mask = np.zeros((SIDE, SIDE), np.uint8)
    mask[8:24, 4:12] = 1
    full = Generated(image, mask, np.zeros((2, 8, 8), np.float32), "cat", "a photograph of a cat", 5)
    empty = Generated(image, np.zeros_like(mask), np.zeros((2, 8, 8), np.float32), "cat", "a photograph of a cat", 6)
    rows = [
        {"key": "cat\t5", "unit_id": "u", "stage": None, "error_type": None, "message": None, **sample_columns(full, 1)},
        {"key": "cat\t6", "unit_id": "u", "stage": None, "error_type": None, "message": None, **sample_columns(empty, 1)},
        synth_error("cat\t7", "u", "cat", 1, 7, "model", RuntimeError("CUDA out of memory")),
    ]
    tables = split_samples(SYNTH_TABLES.to_table(rows), "r1", "tiny")
    assert tables["samples"].schema == SAMPLES_SCHEMA and tables["errors"].schema == SYNTH_ERRORS_SCHEMA
    samples = tables["samples"].to_pylist()
    assert np.array_equal(decode_png(samples[0]["image_png"]), image)
    assert np.array_equal(decode_png(samples[0]["mask_png"]), mask)
    assert (samples[0]["pixel_count"], samples[0]["bbox_xywh"], samples[0]["components"]) == (128, [4, 8, 8, 16], 1)
    assert (samples[1]["pixel_count"], samples[1]["fraction"], samples[1]["bbox_xywh"]) == (0, 0.0, [0, 0, 0, 0])
    assert {s["run_id"] for s in samples} == {"r1"}
    [error] = tables["errors"].to_pylist()
    assert (error["class_name"], error["seed"], error["stage"], error["error_type"]) == ("cat", 7, "model", "RuntimeError")
    assert "out of memory" in error["message"] and error["run_id"] == "r1"


def test_shared_unit_committer_commits_synth_units_and_debris_removal_keeps_to_its_tables(tmp_path):
    from diffseg.lake.commit import WriteTarget, compact_unit, write_results
    from diffseg.lake.done_index import load_state
    from diffseg.lake.log import CommitLog
    from diffseg.lake.schemas import synth_error
    from diffseg.lake.sweep import sweep
    from diffseg.lake.writer import UnitCommitter

    store = OutputStore(str(tmp_path))
    units = make_synth_units(["cat"], range(4), unit_size=2)
    target = WriteTarget(str(tmp_path), "default", "tiny", "h", invocation="0123456789ab")
    commit_log = CommitLog(store, "default", "0123456789ab")
    commit_log.begin()
    committer = UnitCommitter(store, commit_log, units, SYNTH_TABLES, background=False)
    # unit 0 arrives whole, unit 1 one item at a time, its first item twice (a retried batch)
    for unit, picks in ((0, [0, 1]), (1, [1]), (1, [1]), (1, [0])):
        keys = [units[unit].uris[p] for p in picks]
        rows = [synth_error(k, units[unit].unit_id, "cat", 1, parse_key(k)[1], "model", "boom") for k in keys]
        meta = write_results(store, target, SYNTH_TABLES, SYNTH_TABLES.to_table(rows), np.array(picks),
                             np.array([2] * len(picks)))
        for spec in committer.add(meta):
            committer.compacted(spec, compact_unit(spec, SYNTH_TABLES))
    assert sorted(committer.committed) == sorted(u.unit_id for u in units) and committer.counts["errors"] == 4
    assert committer.counts["sample_rows"] == 0 and committer.errors_by_stage() == {"model": 4}
    assert store.list("_staging") == []
    errors = read_committed(str(tmp_path), "errors", schemas=SYNTH_SCHEMAS)
    assert sorted(errors["seed"].to_pylist()) == [0, 1, 2, 3] and set(errors["message"].to_pylist()) == {"boom"}
    half = "samples/part-default-0123456789ab-feedfeedfeedfeed-00000000.parquet"
    store.put(half, b"half-written")
    store.put("masks/part-default-0123456789ab-feedfeedfeedfeed-00000000.parquet", b"another job's table: not ours")
    nxt = CommitLog(store, "default", "ba9876543210")
    nxt.begin()
    assert sweep(store, nxt, load_state(store, "default"), ["0123456789ab"], SYNTH_SCHEMAS) == [half]


def test_actor_generates_each_group_in_one_call_and_isolates_a_failing_seed(monkeypatch, request):
    import torch

    import diffseg.generate as generate
    from jobs.synthesize.actor import SynthUDF, SynthUdfConfig

    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    udf = SynthUDF("tiny", SynthUdfConfig(steps=2, resolution=SIDE))  # sets the process's torch threads
    calls = []
    real = generate.generate_with_masks

    def spy(pipe, class_name, seeds, cfg, params=None):
        calls.append((class_name, list(seeds)))
        if 13 in seeds:
            raise RuntimeError("seed 13 breaks the model")
        return real(pipe, class_name, seeds, cfg, params)

    monkeypatch.setattr(generate, "generate_with_masks", spy)
    items = [("potted plant", 2, 4, "g1"), ("cat", 1, 12, "g2"), ("potted plant", 2, 5, "g1"), ("cat", 1, 13, "g2")]
    batch = {
        "key": np.array([item_key(c, s) for c, _, s, _ in items], dtype=object),
        "unit_id": np.array(["u1", "u2", "u1", "u2"], dtype=object),
        "group": np.array([g for *_, g in items], dtype=object),
        "class_name": np.array([c for c, *_ in items], dtype=object),
        "class_id": np.array([i for _, i, *_ in items], dtype=np.int32),
        "seed": np.array([s for _, _, s, _ in items], dtype=np.int64),
    }
    rows = {r["key"]: r for r in udf(batch).to_pylist()}
    assert calls == [("potted plant", [4, 5]), ("cat", [12, 13]), ("cat", [12]), ("cat", [13])]
    assert sorted(rows) == sorted(batch["key"])
    assert rows["cat\t13"]["stage"] == "model" and "seed 13 breaks the model" in rows["cat\t13"]["message"]
    for key in ("potted plant\t4", "potted plant\t5", "cat\t12"):
        assert rows[key]["stage"] is None and decode_png(rows[key]["image_png"]).shape == (SIDE, SIDE, 3)
    # the same seeds generated directly by the library give the same bytes
    direct = real(udf.pipe, "potted plant", [4, 5], udf.generation, udf.params)
    assert np.array_equal(decode_png(rows["potted plant\t5"]["image_png"]), direct[1].image)


def test_finished_run_is_not_redone_and_other_settings_are_refused_without_ray(tmp_path, capsys):
    """A run whose units are all committed does no model work (Ray is never started); the same run id
    with other generation settings, or a model that is not there, exits 2 naming the problem."""
    from jobs.synthesize.run import run

    output = str(tmp_path / "out")
    cfg = config(output)
    store = OutputStore(output)
    for unit in make_synth_units(["cat", "potted plant"], cfg.seeds, cfg.unit_size):
        write_unit(store, "default", unit, {t: s.empty_table() for t, s in SYNTH_SCHEMAS.items()}, SYNTH_SCHEMAS)
    assert run(cfg) == 0
    assert "nothing to do: all 6 (class, seed) samples are already committed" in capsys.readouterr().out
    manifest = store.get_json("manifest.json")
    assert manifest["job"] == "synthesize" and manifest["status"] == "nothing to do"
    assert manifest["counts"]["already_done"] == 6

    assert run(config(output, guidance=3.0)) == 2
    out = capsys.readouterr().err
    assert "guidance: 7.0 there, 3.0 now" in out and "--run-id" in out
    assert run(config(output, classes="cat, dog")) == 2
    assert run(config(output, model=str(tmp_path / "no-such-model"), run_id="other")) == 2
    assert "no such folder" in capsys.readouterr().err
    assert read_committed(output, "samples", schemas=SYNTH_SCHEMAS).num_rows == 0


# ---------------------------------------------------------------- the job on Ray (slow)


@pytest.fixture(scope="module")
def first_run(ray_local, synth_bucket):
    """2 classes x seeds 0..2 into an S3 OUTPUT; returns (output, exit code, summary line)."""
    import contextlib

    from jobs.synthesize.run import run

    output = f"s3://{synth_bucket}/synth"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = run(config(output))
    return output, code, out.getvalue()


@pytest.fixture(scope="module")
def synth_bucket(s3_endpoint):
    """A bucket for this module: the first run's OUTPUT is shared by the tests below."""
    import uuid

    import boto3

    name = f"synth-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


@pytest.mark.slow
def test_pairs_decode_each_item_once_resubmit_is_a_noop_and_more_seeds_add_only_them(first_run, capsys):
    from jobs.synthesize.run import run

    output, code, summary = first_run
    assert code == 0 and "6 samples (6 generated, 0 errors" in summary
    expected = [(c, s) for c in ("cat", "potted plant") for s in range(3)]
    tables = check_each_item_once(output, expected)
    check_samples(tables["samples"], SIDE)
    assert tables["errors"].num_rows == 0 and tables["samples"].schema.equals(SAMPLES_SCHEMA)
    store = OutputStore(output)
    manifest = store.get_json("manifest.json")
    assert manifest["counts"]["generated"] == manifest["counts"]["sample_rows"] == 6
    assert manifest["units"]["committed"] == 4 and manifest["vocabulary"]["class_ids"] == {"cat": 1, "potted plant": 2}
    assert "testing" not in str(manifest)  # the tests' AWS secret key

    # resubmit: no model work, no new file
    before = store.list("samples") + store.list("errors")
    assert run(config(output)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert store.list("samples") + store.list("errors") == before

    # another guidance under the same run id is refused; more seeds per class generate only the new ones
    assert run(config(output, guidance=5.0)) == 2
    assert run(config(output, per_class=4)) == 0
    assert "2 samples (2 generated" in capsys.readouterr().out
    check_each_item_once(output, [(c, s) for c in ("cat", "potted plant") for s in range(4)])


@pytest.mark.slow
def test_same_class_and_seed_give_identical_bytes_in_another_output(first_run, tmp_path):
    """Reproducibility through the job: a separate run into another OUTPUT, with another unit size and
    fewer seeds, gives byte-identical images and masks for the (class, seed) pairs both have."""
    from jobs.synthesize.run import run

    output, code, _ = first_run
    assert code == 0
    again = str(tmp_path / "again")
    assert run(config(again, per_class=2, unit_size=3)) == 0
    first = {(r["class_name"], r["seed"]): r for r in read_output(output, "samples").to_pylist()}
    second = read_output(again, "samples").to_pylist()
    assert len(second) == 4
    for row in second:
        twin = first[(row["class_name"], row["seed"])]
        assert row["image_png"] == twin["image_png"] and row["mask_png"] == twin["mask_png"]
        assert row["rle_counts"] == twin["rle_counts"]


@pytest.mark.slow
def test_killed_job_resumes_and_produces_each_item_once(ray_local, first_run, tmp_path, capsys):
    """Kill a running `python -m jobs.synthesize` (driver, its Ray runtime, actors) after some units were
    committed, then submit it again: it generates the rest, removes the debris, each (class, seed) once,
    with the same bytes as the uninterrupted first run where the two share a generation group."""

    from jobtest_utils import kill_job_after_commits

    from jobs.synthesize.run import run

    classes, per_class = "cat, dog, potted plant, rocket", 10
    output = tmp_path / "out"
    argv = ["jobs.synthesize", str(output), "--classes", classes, "--per-class", str(per_class),
            "--model", "tiny", "--steps", "2", "--resolution", str(SIDE), "--unit-size", "2", "--batch-size", "2",
            "--address", "local", "--num-cpus", "2", "--object-store-mb", "150"]
    committed = kill_job_after_commits(argv, output, tmp_path / "job.log")  # whole markers only
    assert 2 <= committed < 20
    # what a kill can leave: a unit's file that no commit names (made explicit here)
    store = OutputStore(str(output))
    (killed,) = {store.get_json(r)["invocation"] for r in store.list("_log/default") if r.endswith(".json")
                 and not r.rsplit("/", 1)[1].startswith("_")}
    (output / "samples" / f"part-default-{killed}-00000000deadbeef-0badc0de.parquet").write_bytes(b"half-written")

    cfg = config(str(output), classes=classes, per_class=per_class)
    assert run(cfg) == 0
    counts = OutputStore(str(output)).get_json("manifest.json")["counts"]
    assert counts["already_done"] == 2 * committed and counts["generated"] == 40 - 2 * committed
    assert counts["debris_files_removed"] >= 1
    names = [c.strip() for c in classes.split(",")]
    tables = check_each_item_once(str(output), [(c, s) for c in names for s in range(per_class)])
    assert tables["samples"].num_rows == 40
    assert f"{40 - 2 * committed} samples ({40 - 2 * committed} generated" in capsys.readouterr().out
    # seeds 0 and 1 of a class form one generation group in both jobs (--batch-size 2)
    reference = {(r["class_name"], r["seed"]): r["image_png"] for r in read_output(first_run[0], "samples").to_pylist()}
    here = {(r["class_name"], r["seed"]): r["image_png"] for r in tables["samples"].to_pylist()}
    for key in [(c, s) for c in ("cat", "potted plant") for s in (0, 1)]:
        assert here[key] == reference[key], key
