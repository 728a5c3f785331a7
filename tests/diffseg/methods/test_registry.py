"""diffseg.methods' registry: a user-defined method runs in the Segmenter like a built-in one."""

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from diffseg import Needs, Segmenter, methods


@dataclass(frozen=True)
class HalfParams:
    column: int = 0  # label columns left of this pixel column of the score map as the first class


def left_is_first_class(maps, spans, params=None):
    """Class 1 on the left `column` columns of the finest cross-attention grid, background elsewhere."""
    p = params or HalfParams()
    side = maps.levels[0]
    b = next(iter(maps.cross.values())).shape[0]
    scores = torch.zeros(b, 1 + len(spans), side, side)
    scores[:, 0] = 0.5
    scores[:, 1, :, : p.column] = 1.0
    return scores


def test_a_registered_method_runs_in_the_segmenter(tiny_pipe, monkeypatch):
    monkeypatch.setattr(methods, "_REGISTRY", dict(methods._REGISTRY))
    methods.register("left-half", left_is_first_class, Needs(cross=True), HalfParams)
    assert "left-half" in methods.available()
    seg = Segmenter(tiny_pipe, ["cat", "dog"], method=["left-half", "diffsegmenter"], resolution=64,
                    params={"left-half": methods.make_params("left-half", {"column": 4})})
    image = np.zeros((40, 80, 3), np.uint8)
    res = seg.segment([image])["left-half"][0]
    assert res.classes == ["cat"]
    assert (res.label_map[:, :40] == 1).all() and (res.label_map[:, 40:] == 0).all()  # 4 of 8 columns
    with pytest.raises(ValueError, match="no parameter"):
        methods.make_params("left-half", {"row": 1})
