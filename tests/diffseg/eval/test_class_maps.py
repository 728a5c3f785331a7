"""diffseg.eval.class_maps: the three class-map formats and the vocabulary -> ground-truth lookup table."""

from __future__ import annotations

import json

import pytest

from diffseg.eval.class_maps import build_lut, load_class_map, parse_class_map
from diffseg.eval.errors import EvaluationError


def test_text_json_object_and_json_list_give_the_same_ids(tmp_path):
    text = (
        "# PASCAL VOC ids\nbackground: 0\ncat: 8\ndog: 12\ntv monitor: 20   # aliases share an id\ntv: 20\n"
    )
    as_text = parse_class_map(text)
    assert as_text == {"background": 0, "cat": 8, "dog": 12, "tv monitor": 20, "tv": 20}
    assert parse_class_map(json.dumps({"cat": 8, "dog": 12})) == {"cat": 8, "dog": 12}
    names = [None] * 13
    names[0], names[8], names[12] = "background", " cat ", "dog"
    assert parse_class_map(json.dumps(names)) == {"background": 0, "cat": 8, "dog": 12}
    path = tmp_path / "voc.txt"
    path.write_text(text)
    assert load_class_map(str(path)) == as_text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("cat 8\n", r"voc.txt:1: expected `name: id`, got 'cat 8'"),
        ('{"cat": true}', r"id of 'cat' must be an integer, got True"),
        ('"cat"', "expected a JSON object or list, got str"),
        ("# nothing\n", "maps no class"),
        ("cat: 255\ndog: -1\n", r"not the ignore id 255: \{'cat': 255, 'dog': -1\}"),
    ],
)
def test_bad_class_maps_name_the_line_or_value(text, message):
    with pytest.raises(EvaluationError, match=message):
        parse_class_map(text, "voc.txt")


def test_unreadable_class_map_names_the_path(tmp_path):
    with pytest.raises(EvaluationError, match="cannot read the class map .*missing.txt"):
        load_class_map(str(tmp_path / "missing.txt"))


def test_lut_maps_each_label_to_its_ground_truth_id_case_insensitively():
    lut, names = build_lut(
        ["Cat", "dog", "tv", "tv monitor"], {"cat": 8, "DOG": 12, "tv": 20, "tv monitor": 20}
    )
    assert lut.tolist() == [0, 8, 12, 20, 20]  # label 0 = background -> id 0
    assert names == {0: "background", 8: "Cat", 12: "dog", 20: "tv / tv monitor"}


def test_background_id_and_classes_counted_as_background():
    lut, names = build_lut(["cat", "sky"], {"background": 3, "cat": 8, "sky": 3})
    assert lut.tolist() == [3, 8, 3]
    assert names[3] == "background / sky"


def test_lut_refuses_unknown_and_unmapped_names():
    with pytest.raises(
        EvaluationError, match=r"class map names \['aeroplane'\] are not in the run's vocabulary"
    ):
        build_lut(["cat"], {"cat": 8, "aeroplane": 1})
    with pytest.raises(EvaluationError, match=r"vocabulary classes \['dog'\] have no ground-truth id"):
        build_lut(["cat", "dog"], {"cat": 8})
