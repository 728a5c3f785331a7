"""diffseg.eval.protocol: splits (lists, holdout by stem hash), the tau sweep and choose_tau on known answers."""

from __future__ import annotations

import numpy as np
import pytest

from diffseg.eval.errors import EvaluationError
from diffseg.eval.protocol import (
    Split,
    choose_tau,
    in_holdout,
    make_protocol,
    parse_grid,
    read_stems,
    sweep,
)

STEMS = {f"2007_{i:06d}" for i in range(200)}


# --- splits -------------------------------------------------------------------------------------------


def test_holdout_hash_is_the_documented_one():
    # sha256("0:2007_000032")[:8] / 2**64 = 0.02570..., sha256("0:2007_000039")[:8] / 2**64 = 0.79053...
    assert in_holdout("2007_000032", 0.026, 0) and not in_holdout("2007_000032", 0.025, 0)
    assert in_holdout("2007_000039", 0.791, 0) and not in_holdout("2007_000039", 0.790, 0)


def test_holdout_membership_is_stable_across_calls_and_independent_of_the_other_images():
    first = make_protocol(STEMS, Split(holdout=0.3, seed=7), fitting=True)
    again = make_protocol(set(STEMS), Split(holdout=0.3, seed=7), fitting=True)
    assert first.eval == again.eval and first.fit == again.fit
    assert first.fit | first.eval == STEMS and not first.fit & first.eval
    assert 40 <= len(first.eval) <= 80  # about 30 % of 200
    # a grown dataset keeps every earlier image on its side
    grown = make_protocol(STEMS | {f"new_{i}" for i in range(100)}, Split(holdout=0.3, seed=7), fitting=True)
    assert grown.eval & STEMS == first.eval
    # another seed is another split
    assert make_protocol(STEMS, Split(holdout=0.3, seed=8), fitting=True).eval != first.eval
    assert (first.kind, first.holdout, first.seed) == ("holdout", 0.3, 7)


def test_fitting_without_a_split_holds_out_half_and_without_fitting_everything_is_reported():
    fitted = make_protocol(STEMS, Split(), fitting=True)
    assert fitted.holdout == 0.5 and fitted.eval == {s for s in STEMS if in_holdout(s, 0.5, 0)}
    plain = make_protocol(STEMS, Split(), fitting=False)
    assert (plain.kind, plain.fit, plain.eval) == ("all", set(), STEMS)


def test_split_lists_one_alone_means_the_rest_for_the_other():
    matched = {"a", "b", "c", "d"}
    both = make_protocol(matched, Split(fit=frozenset({"a", "x"}), eval=frozenset({"c"})), fitting=True)
    assert (both.kind, both.fit, both.eval) == ("lists", {"a"}, {"c"})  # unmatched "x" dropped
    fit_only = make_protocol(matched, Split(fit=frozenset({"a"})), fitting=True)
    assert (fit_only.fit, fit_only.eval) == ({"a"}, {"b", "c", "d"})
    eval_only = make_protocol(matched, Split(eval=frozenset({"a"})), fitting=True)
    assert (eval_only.fit, eval_only.eval) == ({"b", "c", "d"}, {"a"})
    not_fitting = make_protocol(matched, Split(eval=frozenset({"a"})), fitting=False)
    assert (not_fitting.fit, not_fitting.eval) == (set(), {"a"})


def test_split_errors_name_the_problem():
    with pytest.raises(EvaluationError, match=r"2 images are in both .*\['a', 'b'\]"):
        make_protocol({"a", "b", "c"}, Split(fit=frozenset("ab"), eval=frozenset("ab")), fitting=True)
    with pytest.raises(EvaluationError, match="either --fit-split/--eval-split or --holdout"):
        make_protocol({"a"}, Split(fit=frozenset("a"), holdout=0.5), fitting=True)
    with pytest.raises(EvaluationError, match=r"--holdout must be in \(0, 1\), got 1.0"):
        make_protocol({"a"}, Split(holdout=1.0), fitting=False)


def test_split_file_lines_become_stems(tmp_path):
    path = tmp_path / "fit.txt"
    path.write_text("# VOC ids\n2007_000032\n\ns3://b/JPEGImages/2007_000039.jpg  # a URI\nimg.v2\nx/y.png\n")
    assert read_stems(str(path)) == {"2007_000032", "2007_000039", "img.v2", "y"}
    with pytest.raises(EvaluationError, match="cannot read the split file"):
        read_stems(str(tmp_path / "missing.txt"))


# --- the tau grid, the sweep and the choice -----------------------------------------------------------


def test_grid_from_range_or_list_and_its_errors():
    grid = parse_grid("0.05:0.95:0.05")
    assert len(grid) == 19 and grid[0] == 0.05 and grid[-1] == 0.95 and grid[6] == 0.35
    assert parse_grid("0.3, 0.1").tolist() == [0.3, 0.1]
    with pytest.raises(EvaluationError, match=r"thresholds must lie in \[0, 1\]"):
        parse_grid("0:2:0.5")
    with pytest.raises(EvaluationError, match="expected start:stop:step or a comma list"):
        parse_grid("0.1:0.5")


def test_sweep_counts_each_threshold_and_the_known_tau_wins():
    # one row of 5 pixels: gt background, background, cat (8), cat, ignore; the cat scores rise left to right
    fg_score = np.array([[0.2, 0.4, 0.6, 0.8, 0.9]], np.float32)
    fg_label = np.ones((1, 5), np.int32)
    gt = np.array([[0, 0, 8, 8, 255]], np.uint8)
    lut = np.array([0, 8])
    grid = np.array([0.1, 0.3, 0.5, 0.7, 0.9])
    cms = sweep([(fg_score, fg_label, gt)], grid, lut)
    assert cms.shape == (5, 9, 9)
    # tau 0.1: every counted pixel is cat; tau 0.5: perfect; tau 0.9: every counted pixel is background
    assert (cms[0][0, 8], cms[0][8, 8], cms[0][0, 0]) == (2, 2, 0)
    assert (cms[2][0, 0], cms[2][8, 8], cms[2].sum()) == (2, 2, 4)
    assert (cms[4][0, 0], cms[4][8, 0], cms[4][8, 8]) == (2, 2, 0)
    tau, miou, curve = choose_tau(grid, cms)
    assert tau == 0.5 and miou == 1.0
    assert curve[0] == [0.1, pytest.approx(0.25)]  # background IoU 0, cat IoU 2/4
    # two images are summed: a second one that is perfect at 0.3 and 0.5 keeps 0.5 the only best
    second = (np.array([[0.2, 0.6]], np.float32), np.ones((1, 2), np.int32), np.array([[0, 8]], np.uint8))
    summed = sweep([(fg_score, fg_label, gt), second], grid, lut)
    assert summed[2].trace() == 6 and summed[1].trace() == 5
    assert choose_tau(grid, summed)[:2] == (0.5, 1.0)


def test_choose_tau_takes_the_middle_of_a_plateau_of_ties():
    perfect = np.diag([5, 5]).astype(np.int64)
    worse = np.array([[5, 5], [0, 5]], np.int64)  # background IoU 0.5, class 1 IoU 0.5
    grid = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    cms = np.stack([worse, perfect, perfect, perfect, worse])
    assert choose_tau(grid, cms)[:2] == (0.3, 1.0)
    assert choose_tau(grid[:4], cms[1:3].repeat(2, axis=0))[0] == 0.3  # 4 tied -> index 2
    with pytest.raises(EvaluationError, match="no counted pixels"):
        choose_tau(grid[:1], np.zeros((1, 2, 2), np.int64))
