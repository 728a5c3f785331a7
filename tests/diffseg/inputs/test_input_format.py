"""--input-format auto: the form is found from INPUT's name and contents, and ambiguous INPUT is refused
naming the choice; explicit forms and their options."""

from __future__ import annotations

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from diffseg.inputs import InputError, InputOptions, list_input, parse_format


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def test_an_img2dataset_output_folder_is_webdataset_and_mixed_folders_are_ambiguous(tmp_path):
    lake = tmp_path / "lake"
    lake.mkdir()
    for i in range(2):  # img2dataset writes, per shard: the tar, a metadata .parquet (no image bytes), stats
        (lake / f"0000{i}.tar").write_bytes(tar_bytes({f"0000{i}0000.jpg": b"x", f"0000{i}0000.json": b"{}"}))
        pq.write_table(pa.table({"key": [f"0000{i}0000"], "url": ["http://x"], "caption": ["c"]}),
                       lake / f"0000{i}.parquet")
        (lake / f"0000{i}_stats.json").write_text("{}")
    listing = list_input(str(lake))
    assert listing.form == "webdataset" and len(listing) == 2 and "2 WebDataset shards" in listing.detected
    # a *.tar glob is shards (it used to make each shard one image and one error row)
    assert list_input(str(lake / "*.tar")).form == "webdataset"
    assert list_input(str(lake / "*")).form == "webdataset"
    (lake / "cover.jpg").write_bytes(b"an image beside the shards")
    with pytest.raises(InputError, match=r"ambiguous: it holds 1 image files and 2 WebDataset shards \(.tar\); "
                                         r"choose one with --input-format files or --input-format webdataset"):
        list_input(str(lake))
    assert list_input(str(lake), "files").uris.to_pylist() == [f"file://{lake}/cover.jpg"]
    assert len(list_input(str(lake), "webdataset")) == 2
    rows = tmp_path / "rows"
    rows.mkdir()
    (rows / "cover.jpg").write_bytes(b"an image")
    pq.write_table(pa.table({"jpg": [b"bytes"]}), rows / "rows.parquet")  # detection reads the first footer
    with pytest.raises(InputError, match="1 image files and 1 Parquet/Arrow files with image bytes; choose one with "
                                         "--input-format files or --input-format parquet"):
        list_input(str(rows))


def test_todays_forms_are_detected_as_files(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "list.txt").write_text("a.jpg\n")
    pq.write_table(pa.table({"uri": ["a.jpg"]}), tmp_path / "list.parquet")
    for spec in ("", "a.jpg", "list.txt", "list.parquet", "*.jpg"):
        listing = list_input(str(tmp_path / spec) if spec else str(tmp_path))
        assert listing.form == "files" and listing.uris.to_pylist() == [f"file://{tmp_path}/a.jpg"], spec
    assert list_input(str(tmp_path / "n*")).uris.to_pylist() == [f"file://{tmp_path}/notes.txt"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no image files"):
        list_input(str(tmp_path / "empty"))
    with pytest.raises(InputError, match="does not exist"):
        list_input(str(tmp_path / "missing"))


def test_input_format_values_and_their_options():
    assert parse_format("auto") == ("auto", InputOptions())
    assert parse_format("parquet:image=jpg,key=id,metadata=1") == ("parquet", InputOptions("jpg", "id", True))
    assert parse_format("WebDataset:image=png") == ("webdataset", InputOptions(image="png"))
    with pytest.raises(InputError, match="must be one of auto, files, webdataset, parquet, inventory"):
        parse_format("tar")
    with pytest.raises(InputError, match="'colour=red' is not one of image=NAME, key=COLUMN, metadata=1"):
        parse_format("parquet:colour=red")
    with pytest.raises(InputError, match="key= names a column of a table"):
        parse_format("webdataset:key=id")


def test_the_segment_job_exits_2_naming_the_choice_for_ambiguous_input(tmp_path, capsys):
    """python -m jobs.segment on a folder of images and shards: exit 2 before any image is read, the
    message naming --input-format; a bad --input-format value is a usage error (exit 2)."""
    from jobtest_utils import run_main

    from jobs.segment.cli import build_parser, config_from_args, main

    lake = tmp_path / "lake"
    lake.mkdir()
    (lake / "00000.tar").write_bytes(tar_bytes({"k.jpg": b"x"}))
    (lake / "a.jpg").write_bytes(b"x")
    common = ["--model", "tiny", "--vocab", "cat", "--resolution", "64"]
    code, out, err = run_main(main, capsys, lake, tmp_path / "out", *common)
    assert code == 2, out + err
    assert "ambiguous" in err and "--input-format files or --input-format webdataset" in err
    config = config_from_args(build_parser().parse_args([str(lake), "out/", *common, "--input-format", "files"]))
    assert config.input_format == "files" and config.to_dict()["input_format"] == "files"
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([str(lake), "out/", *common, "--input-format", "tar"])
    assert exit_.value.code == 2 and "must be one of auto, files, webdataset, parquet, inventory" in capsys.readouterr().err


def test_braces_make_a_shard_list_only_around_shard_names(tmp_path):
    (tmp_path / "{a,b}.jpg").write_bytes(b"a file named with braces")
    assert list_input(str(tmp_path / "{a,b}.jpg")).uris.to_pylist() == [f"file://{tmp_path}/{{a,b}}.jpg"]
    for i in range(2):
        (tmp_path / f"0000{i}.tar").write_bytes(tar_bytes({"k.jpg": b"x"}))
    assert len(list_input(str(tmp_path / "{00000..00001}.tar"))) == 2


def test_auto_lists_loose_files_as_the_files_form_does(tmp_path, bucket):
    """What the job now calls (list_input, auto) gives list_inputs' URIs for today's forms, hostile names
    included (test_files.py pins list_inputs itself)."""
    import os

    from jobtest_utils import put_files

    from diffseg.inputs import list_inputs

    files = {"a.jpg": b"1", "B.PNG": b"2", "sub/deeper/c.JpEg": b"3", "notes.txt": b"x", "sub/d.parquet": b"x",
             ".hidden/e.webp": b"4", "colon::x.png": b"5", "take#2.jpg": b"6"}
    put_files(str(tmp_path / "lake"), files)
    put_files(f"s3://{bucket}/images", files)
    with open(os.path.join(os.fsencode(str(tmp_path / "lake")), b"caf\xe9.jpg"), "wb") as f:
        f.write(b"latin-1 name")
    os.mkfifo(tmp_path / "lake" / "fifo.jpg")
    (tmp_path / "list.txt").write_text("lake/a.jpg\nlake/take#2.jpg\n")
    specs = [str(tmp_path / "lake"), f"file://{tmp_path}/lake/", str(tmp_path / "lake" / "*.jpg"),
             str(tmp_path / "lake" / "n*"), str(tmp_path / "list.txt"), str(tmp_path / "lake" / "a.jpg"),
             f"s3://{bucket}/images/", f"s3://{bucket}/images/sub/*/*", f"s3://{bucket}/images/a"]
    for spec in specs:
        listing = list_input(spec)
        assert listing.form == "files" and listing.uris.to_pylist() == list_inputs(spec), spec
