"""Segmentation metrics on sparse labels: confusion matrix, accuracy, per-class IoU, table.

Targets are training labels ``0..K`` (0 = unlabelled, never counted); predictions
are class indices ``0..K-1`` (so class ``k`` is label ``k + 1``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["SegmentationMetrics", "confusion_matrix"]


def confusion_matrix(predicted: np.ndarray, labels: np.ndarray, *, n_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]`` over the labelled voxels.

    Parameters
    ----------
    predicted : ndarray of int, any shape
        Class indices ``0..K-1``.
    labels : ndarray of int, same shape
        Training labels ``0..K``; voxels labelled 0 are left out.
    n_classes : int, keyword-only
        ``K``.

    Returns
    -------
    ndarray of int64, shape (K, K)
    """
    if predicted.shape != labels.shape:
        raise ValueError(f"predicted {predicted.shape} and labels {labels.shape} differ in shape")
    keep = labels > 0
    true = labels[keep].astype(np.int64) - 1
    pred = np.clip(predicted[keep].astype(np.int64), 0, n_classes - 1)
    return np.bincount(true * n_classes + pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


@dataclass(frozen=True)
class SegmentationMetrics:
    """Accuracy and per-class IoU from a confusion matrix.

    Attributes
    ----------
    classes : tuple of str
        Class names, ``K`` of them.
    confusion : ndarray of shape (K, K)
        ``[true, predicted]`` voxel counts.
    """

    classes: tuple[str, ...]
    confusion: np.ndarray

    @classmethod
    def from_arrays(
        cls, predicted: np.ndarray, labels: np.ndarray, *, classes: Sequence[str]
    ) -> SegmentationMetrics:
        return cls(tuple(classes), confusion_matrix(predicted, labels, n_classes=len(classes)))

    def __add__(self, other: SegmentationMetrics) -> SegmentationMetrics:
        return SegmentationMetrics(self.classes, self.confusion + other.confusion)

    @property
    def accuracy(self) -> float:
        """Fraction of labelled voxels predicted right (NaN when none is labelled)."""
        total = self.confusion.sum()
        return float(np.trace(self.confusion) / total) if total else math.nan

    @property
    def iou(self) -> dict[str, float]:
        """IoU per class; NaN for a class absent from both truth and prediction."""
        tp = np.diag(self.confusion).astype(np.float64)
        union = self.confusion.sum(axis=0) + self.confusion.sum(axis=1) - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            values = np.where(union > 0, tp / np.maximum(union, 1), math.nan)
        return dict(zip(self.classes, (float(v) for v in values), strict=True))

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the classes that occur (in truth or prediction)."""
        values = [v for v in self.iou.values() if not math.isnan(v)]
        return float(np.mean(values)) if values else math.nan

    def to_dict(self) -> dict:
        """JSON-able: accuracy, mean IoU, IoU and voxel count per class (NaN → None)."""
        clean = lambda v: None if math.isnan(v) else round(v, 6)  # noqa: E731
        return {
            "accuracy": clean(self.accuracy),
            "mean_iou": clean(self.mean_iou),
            "iou": {k: clean(v) for k, v in self.iou.items()},
            "voxels": dict(zip(self.classes, (int(n) for n in self.confusion.sum(axis=1)), strict=True)),
        }

    def table(self) -> str:
        """A plain-text table: one row per class (IoU, labelled voxels), then mean IoU and accuracy."""
        width = max(10, *(len(c) for c in self.classes))
        rows = [f"{'class':<{width}}  {'IoU':>7}  {'voxels':>10}"]
        counts = self.confusion.sum(axis=1)
        for (name, value), n in zip(self.iou.items(), counts, strict=True):
            rows.append(f"{name:<{width}}  {_pct(value):>7}  {int(n):>10}")
        rows.append(f"{'mean IoU':<{width}}  {_pct(self.mean_iou):>7}")
        rows.append(f"{'accuracy':<{width}}  {_pct(self.accuracy):>7}  {int(counts.sum()):>10}")
        return "\n".join(rows)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}%"
