"""diffseg.eval.metrics: every figure against a hand computation; ignore pixels ignored."""

from __future__ import annotations

import numpy as np
import pytest

from diffseg.eval.metrics import (
    ConfusionMatrix,
    confusion_by_threshold,
    confusion_matrix,
    foreground_from_scores,
    iou_per_class,
    mean_iou,
    pixel_accuracy,
    resize_bilinear,
    resize_nearest,
)

# 3 classes; two ground-truth pixels are 255 (ignore) and their predictions must not count.
GT = np.array(
    [
        [0, 0, 1, 1],
        [0, 2, 1, 255],
        [2, 2, 255, 1],
    ],
    dtype=np.uint8,
)
PRED = np.array(
    [
        [0, 1, 1, 1],
        [0, 2, 0, 2],
        [2, 0, 1, 1],
    ],
    dtype=np.uint8,
)
# Counted by hand over the 10 non-ignored pixels, rows = ground truth, columns = prediction:
#   gt 0 at (0,0) (0,1) (1,0): predicted 0, 1, 0      -> [2, 1, 0]
#   gt 1 at (0,2) (0,3) (1,2) (2,3): predicted 1, 1, 0, 1 -> [1, 3, 0]
#   gt 2 at (1,1) (2,0) (2,1): predicted 2, 2, 0      -> [1, 0, 2]
HAND_CM = np.array([[2, 1, 0], [1, 3, 0], [1, 0, 2]])
# IoU = tp / (row + col - tp): class 0: 2 / (3 + 4 - 2) = 0.4; class 1: 3 / (4 + 4 - 3) = 0.6;
# class 2: 2 / (3 + 2 - 2) = 2/3. mIoU = (0.4 + 0.6 + 2/3) / 3. Accuracy = (2 + 3 + 2) / 10.
HAND_IOU = [0.4, 0.6, 2 / 3]
HAND_MIOU = (0.4 + 0.6 + 2 / 3) / 3
HAND_ACC = 0.7


def test_confusion_matrix_matches_hand_count_and_skips_ignore():
    cm = confusion_matrix(PRED, GT, num_classes=3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, HAND_CM)
    assert cm.sum() == 10  # 12 pixels, 2 ignored


def test_iou_miou_accuracy_match_hand_computation():
    np.testing.assert_allclose(iou_per_class(HAND_CM), HAND_IOU)
    assert mean_iou(HAND_CM) == pytest.approx(HAND_MIOU)
    assert pixel_accuracy(HAND_CM) == pytest.approx(HAND_ACC)


def test_predictions_on_ignore_pixels_never_count_even_out_of_range():
    pred = PRED.copy()
    pred[GT == 255] = 99  # would be an invalid class anywhere else
    np.testing.assert_array_equal(confusion_matrix(pred, GT, 3), HAND_CM)


def test_class_absent_from_both_is_nan_and_left_out_of_the_mean():
    cm = confusion_matrix(PRED, GT, num_classes=5)
    iou = iou_per_class(cm)
    np.testing.assert_allclose(iou[:3], HAND_IOU)
    assert np.isnan(iou[3]) and np.isnan(iou[4])
    assert mean_iou(cm) == pytest.approx(HAND_MIOU)


def test_class_only_predicted_counts_as_zero_iou():
    pred = PRED.copy()
    pred[0, 0] = 3  # a false positive of class 3, which the ground truth never has
    cm = confusion_matrix(pred, GT, num_classes=4)
    # gt 0 now: predicted 3, 1, 0 -> [1, 1, 0, 1]; class 0: 1 / (3 + 3 - 1) = 0.2; class 3: 0 / 1
    np.testing.assert_array_equal(cm[0], [1, 1, 0, 1])
    iou = iou_per_class(cm)
    np.testing.assert_allclose(iou, [0.2, 0.6, 2 / 3, 0.0])
    assert mean_iou(cm) == pytest.approx((0.2 + 0.6 + 2 / 3 + 0.0) / 4)
    assert pixel_accuracy(cm) == pytest.approx(0.6)


def test_accumulator_sums_images_and_grows_for_unseen_labels():
    acc = ConfusionMatrix(num_classes=2)
    acc.update(PRED, GT)  # grows to 3
    acc.update(np.array([[4]]), np.array([[4]]))  # a class first seen in image 2: grows to 5
    assert acc.images == 2 and acc.num_classes == 5
    expected = np.zeros((5, 5), dtype=np.int64)
    expected[:3, :3] = HAND_CM
    expected[4, 4] = 1
    np.testing.assert_array_equal(acc.cm, expected)
    assert acc.accuracy() == pytest.approx(8 / 11)
    assert acc.miou() == pytest.approx((0.4 + 0.6 + 2 / 3 + 1.0) / 4)
    np.testing.assert_allclose(acc.iou()[:3], HAND_IOU)


def test_out_of_range_label_and_shape_mismatch_name_the_problem():
    with pytest.raises(ValueError, match="predicted label 7 is outside"):
        confusion_matrix(np.full((2, 2), 7), np.zeros((2, 2)), num_classes=3)
    with pytest.raises(ValueError, match="shape"):
        confusion_matrix(np.zeros((2, 3)), np.zeros((3, 2)), num_classes=3)


def test_empty_matrix_gives_nan_not_an_error():
    cm = np.zeros((3, 3), dtype=np.int64)
    assert np.isnan(mean_iou(cm)) and np.isnan(pixel_accuracy(cm))


def test_resize_bilinear_matches_torch_half_pixel_sampling():
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(0).random((3, 5, 7)).astype(np.float32)
    ours = resize_bilinear(maps, (11, 16))
    ref = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[None], size=(11, 16), mode="bilinear", align_corners=False
    )[0]
    np.testing.assert_allclose(ours, ref.numpy(), atol=1e-5)


def test_resize_nearest_keeps_values_and_dtype():
    label = np.array([[1, 2], [3, 4]], dtype=np.uint16)
    out = resize_nearest(label, (4, 6))
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.repeat(np.repeat(label, 2, axis=0), 3, axis=1))


def test_threshold_labels_equal_argmax_over_tau_and_class_scores():
    rng = np.random.default_rng(1)
    scores = rng.random((4, 6, 6)).astype(np.float32)  # background channel + 3 classes
    fg_score, fg_label = foreground_from_scores(scores, (12, 9), chunk=2)  # chunks of 2 must not matter
    up = resize_bilinear(scores[1:], (12, 9))
    for tau in (0.2, 0.5, 0.8):
        stacked = np.concatenate([np.full((1, 12, 9), tau, np.float32), up])
        np.testing.assert_array_equal(np.where(fg_score > tau, fg_label, 0), stacked.argmax(axis=0))


def test_confusion_by_threshold_equals_one_matrix_per_threshold():
    rng = np.random.default_rng(2)
    fg_score = rng.random((8, 8)).astype(np.float32)
    fg_label = rng.integers(1, 3, (8, 8))
    gt = rng.integers(0, 4, (8, 8))
    gt[0, :3] = 255
    lut = np.array([0, 2, 3])  # prediction 0 -> gt 0, 1 -> gt 2, 2 -> gt 3
    taus = np.array([0.0, 0.3, 0.9])
    cms = confusion_by_threshold(fg_score, fg_label, gt, taus, lut, num_classes=4)
    for cm, tau in zip(cms, taus):
        pred = np.where(fg_score > tau, lut[fg_label], lut[0])
        np.testing.assert_array_equal(cm, confusion_matrix(pred, gt, 4))
