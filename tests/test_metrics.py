"""Confusion matrix and mIoU against hand-computed cases."""

import math

import pytest
import torch

from harness.metrics import confusion_matrix, iou_from_confusion


def test_confusion_rows_are_ground_truth_and_ignore_is_dropped() -> None:
    target = torch.tensor([[0, 0, 1], [2, 255, 1]])
    pred = torch.tensor([[0, 1, 1], [1, 0, 1]])
    cm = confusion_matrix(pred, target, num_classes=3)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    assert torch.equal(cm, expected)


def test_iou_hand_computed() -> None:
    # class 0: TP 1, FN 1, FP 0 -> 1/2; class 1: TP 2, FP 2 -> 2/4; class 2: TP 0, FN 1 -> 0.
    cm = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 1, 0]])
    miou, per_class = iou_from_confusion(cm)
    assert per_class.tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert miou == pytest.approx(1 / 3)


def test_absent_classes_are_nan_and_left_out_of_the_mean() -> None:
    target = torch.tensor([0, 0, 1, 1])
    pred = torch.tensor([0, 0, 1, 0])
    miou, per_class = iou_from_confusion(confusion_matrix(pred, target, num_classes=4))
    assert math.isnan(per_class[2]) and math.isnan(per_class[3])
    # class 0: TP 2, FP 1 -> 2/3; class 1: TP 1, FN 1 -> 1/2; classes 2, 3 never occur.
    assert per_class[:2].tolist() == pytest.approx([2 / 3, 1 / 2])
    assert miou == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_class_only_predicted_counts_as_zero() -> None:
    target = torch.tensor([0, 0])
    pred = torch.tensor([0, 1])
    miou, per_class = iou_from_confusion(confusion_matrix(pred, target, num_classes=2))
    assert per_class.tolist() == pytest.approx([0.5, 0.0])
    assert miou == pytest.approx(0.25)


def test_label_out_of_range_is_an_error() -> None:
    with pytest.raises(ValueError, match="target labels"):
        confusion_matrix(torch.tensor([0]), torch.tensor([7]), num_classes=3)


def test_matches_brute_force_on_random_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.randint(0, 5, (2, 9, 7), generator=generator)
    target[0, :2] = 255
    pred = torch.randint(0, 5, (2, 9, 7), generator=generator)
    cm = confusion_matrix(pred, target, num_classes=5)
    for truth in range(5):
        for guess in range(5):
            assert cm[truth, guess] == ((target == truth) & (pred == guess)).sum()
