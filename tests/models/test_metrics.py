"""Metrics on sparse labels: known confusion matrices, IoU and accuracy by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from operando.models.metrics import SegmentationMetrics, confusion_matrix

CLASSES = ("background", "electrode", "pit")


def test_confusion_matrix_leaves_out_unlabelled_voxels():
    labels = np.array([[0, 1, 2], [3, 0, 1]])
    predicted = np.array([[2, 0, 1], [2, 1, 1]])
    conf = confusion_matrix(predicted, labels, n_classes=3)
    # labelled voxels: (1→0), (2→1), (3→2), (1→1); the two label-0 voxels never count
    expected = np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(conf, expected)


def test_iou_accuracy_and_mean_match_hand_computation():
    conf = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])
    m = SegmentationMetrics(CLASSES, conf)
    assert m.accuracy == pytest.approx(17 / 20)
    assert m.iou["background"] == pytest.approx(8 / (8 + 2 + 1))
    assert m.iou["electrode"] == pytest.approx(9 / (9 + 1 + 2))
    assert math.isnan(m.iou["pit"])  # absent from truth and prediction: not part of the mean
    assert m.mean_iou == pytest.approx((8 / 11 + 9 / 12) / 2)


def test_a_class_predicted_but_never_labelled_scores_zero():
    m = SegmentationMetrics.from_arrays(np.array([2, 0]), np.array([1, 1]), classes=CLASSES)
    assert m.iou["pit"] == 0.0
    assert m.mean_iou == pytest.approx((1 / 2 + 0.0) / 2)


def test_sum_of_metrics_adds_confusions_and_table_lists_every_class():
    a = SegmentationMetrics.from_arrays(np.array([0, 1]), np.array([1, 2]), classes=CLASSES)
    b = SegmentationMetrics.from_arrays(np.array([2]), np.array([3]), classes=CLASSES)
    total = a + b
    assert total.accuracy == 1.0
    assert total.to_dict()["iou"] == {"background": 1.0, "electrode": 1.0, "pit": 1.0}
    table = total.table()
    for name in (*CLASSES, "mean IoU", "accuracy"):
        assert name in table
    assert "100.0%" in table


def test_no_labelled_voxel_gives_nan_not_an_error():
    m = SegmentationMetrics.from_arrays(np.zeros(4, int), np.zeros(4, int), classes=CLASSES)
    assert math.isnan(m.accuracy) and math.isnan(m.mean_iou)
    assert m.to_dict()["accuracy"] is None
