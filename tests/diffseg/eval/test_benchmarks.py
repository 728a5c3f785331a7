"""diffseg.eval.benchmarks: the built-in VOC-21, Context-60 and COCO-Object ids, names and vocabularies."""

from __future__ import annotations

import pytest

from diffseg.eval.benchmarks import (
    BENCHMARKS,
    _key,
    builtin_class_map,
    builtin_names,
    builtin_vocabulary,
)
from diffseg.eval.class_maps import lut_for
from diffseg.eval.errors import EvaluationError
from diffseg.vocabulary import Vocabulary

# mmsegmentation's PascalContextDataset.CLASSES, verbatim: the ids of the Context-60 label PNGs
CONTEXT60_MMSEG = (
    "background aeroplane bag bed bedclothes bench bicycle bird boat book bottle building bus cabinet car cat "
    "ceiling chair cloth computer cow cup curtain dog door fence floor flower food grass ground horse keyboard "
    "light motorbike mountain mouse person plate platform pottedplant road rock sheep shelves sidewalk sign sky "
    "snow sofa table track train tree truck tvmonitor wall water window wood"
).split()
VOC21_MMSEG = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse motorbike person "
    "pottedplant sheep sofa train tvmonitor"
).split()


@pytest.mark.parametrize(("name", "classes"), [("voc21", 21), ("context60", 60), ("coco_object", 81)])
def test_counts_and_background(name, classes):
    names = builtin_names(name)
    assert len(names) == classes and names[0] == "background" and sorted(names) == list(range(classes))
    assert len(builtin_vocabulary(name)) == classes - 1  # background comes from the threshold, not a prompt


def test_known_ids():
    assert builtin_names("voc21") == dict(enumerate(VOC21_MMSEG))
    assert builtin_names("voc21")[15] == "person" and builtin_names("voc21")[20] == "tvmonitor"
    assert builtin_names("context60") == dict(enumerate(CONTEXT60_MMSEG))
    coco = builtin_names("coco_object")
    assert coco[1] == "person" and coco[2] == "bicycle" and coco[5] == "airplane" and coco[80] == "toothbrush"
    # COCO-Stuff PNG labels 71 (tv) and 48 (knife) -> GroupViT trainIds 62 and 43, + 1 for background
    assert coco[63] == "tv" and coco[44] == "knife"


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_builtin_vocabulary_parses_and_covers_every_class_once(name):
    vocab = Vocabulary.from_text("\n".join(builtin_vocabulary(name)))
    mapping = builtin_class_map(name, vocab.names)
    ids = [mapping[n] for n in vocab.names]
    assert sorted(ids) == list(range(1, len(builtin_names(name))))  # every non-background id, once
    # no name or alias of one class is a name or alias of another
    keys = [(_key(x), gid) for gid, c in enumerate(BENCHMARKS[name]) for x in {c.official, c.prompt, *c.aliases}]
    assert len({k for k, _ in keys}) == len({(k, g) for k, g in keys})


def test_prompt_names_and_aliases_as_the_papers_write_them():
    voc = Vocabulary.from_text("\n".join(builtin_vocabulary("voc21")))
    assert "potted plant" in voc.names and "dining table" in voc.names
    assert voc.aliases["tv monitor"] == ("television", "monitor") and voc.aliases["dining table"] == ("table",)
    coco = Vocabulary.from_text("\n".join(builtin_vocabulary("coco_object")))
    assert {"traffic light", "teddy bear", "hair drier"} <= set(coco.names)


def test_matching_ignores_case_spaces_and_accepts_official_names_and_aliases():
    mapping = builtin_class_map("VOC-21", ["TV-Monitor", "pottedplant", "ship", "Person"])
    assert mapping == {"background": 0, "TV-Monitor": 20, "pottedplant": 16, "ship": 4, "Person": 15}
    with pytest.raises(EvaluationError, match=r"\['giraffe'\] are not classes of the built-in benchmark 'voc21'"):
        builtin_class_map("voc21", ["person", "giraffe"])
    assert builtin_vocabulary("voc20.txt") is None and builtin_class_map("cityscapes", ["car"]) is None


def test_lut_for_names_every_id_and_prefers_a_local_file(tmp_path, monkeypatch):
    lut, names = lut_for("voc21", ["person", "dog"])
    assert lut.tolist() == [0, 15, 12] and names[15] == "person" and names[20] == "tvmonitor" and len(names) == 21
    monkeypatch.chdir(tmp_path)
    (tmp_path / "voc21").write_text("person: 1\ndog: 2\n")
    assert lut_for("voc21", ["person", "dog"])[0].tolist() == [0, 1, 2]
