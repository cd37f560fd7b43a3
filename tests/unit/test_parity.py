"""Parity of an exported model with PyTorch: what each bound measures, and that each one refuses on its own."""

from __future__ import annotations

import numpy as np
import pytest

from fashion_mlops.export.parity import (
    MAX_ACCURACY_DIFF,
    MAX_PROBABILITY_DIFF,
    MIN_AGREEMENT,
    Fidelity,
    fidelity,
    parity_problem,
)
from fashion_mlops.inference.runtimes import Outputs

N = 10_000


def one_hot_outputs(predicted: np.ndarray, confidence: float = 0.9) -> np.ndarray:
    probs = np.full((len(predicted), 10), (1 - confidence) / 9)
    probs[np.arange(len(predicted)), predicted] = confidence
    return probs


@pytest.fixture
def reference() -> tuple[Outputs, np.ndarray]:
    labels = np.arange(N) % 10
    predicted = labels.copy()
    predicted[:700] = (predicted[:700] + 1) % 10  # 93% accurate
    return Outputs(one_hot_outputs(predicted), None), labels


def test_identical_outputs_agree_fully_and_differ_by_nothing(reference) -> None:
    outputs, labels = reference
    measured = fidelity(outputs, outputs, labels)
    assert measured == Fidelity(test_accuracy=0.93, agreement=1.0, max_probability_diff=0.0)
    assert parity_problem("ONNX Runtime", measured, measured) is None


def test_agreement_below_the_bound_is_refused_naming_the_runtime(reference) -> None:
    outputs, labels = reference
    flipped = outputs.plain.argmax(1)
    changed = round(N * (1 - MIN_AGREEMENT)) + 1  # one image more than the bound allows
    # swap the predicted class on images that were wrong, then right, so accuracy barely moves
    flipped[700 : 700 + changed // 2] = (flipped[700 : 700 + changed // 2] + 1) % 10
    flipped[: changed - changed // 2] = (flipped[: changed - changed // 2] - 1) % 10
    candidate = Outputs(one_hot_outputs(flipped), None)
    measured = fidelity(candidate, outputs, labels)
    assert measured.agreement < MIN_AGREEMENT
    assert measured.max_probability_diff > MAX_PROBABILITY_DIFF
    problem = parity_problem("OpenVINO", measured, fidelity(outputs, outputs, labels))
    assert problem is not None and problem.startswith("OpenVINO agrees with PyTorch on")


def test_within_agreement_but_accuracy_off_by_more_than_the_bound_is_refused() -> None:
    baseline = Fidelity(test_accuracy=0.93, agreement=1.0, max_probability_diff=0.0)
    off = Fidelity(test_accuracy=0.93 + MAX_ACCURACY_DIFF * 1.5, agreement=1.0, max_probability_diff=0.0)
    problem = parity_problem("ONNX Runtime", off, baseline)
    assert problem is not None and "test accuracy" in problem


def test_a_probability_difference_over_the_bound_is_refused_even_when_every_class_agrees(reference) -> None:
    outputs, labels = reference
    nudged = outputs.plain.copy()
    nudged[123, 0] += 2 * MAX_PROBABILITY_DIFF
    measured = fidelity(Outputs(nudged, None), outputs, labels)
    assert measured.agreement == 1.0
    assert measured.max_probability_diff == pytest.approx(2 * MAX_PROBABILITY_DIFF)
    problem = parity_problem("ONNX Runtime", measured, fidelity(outputs, outputs, labels))
    assert problem is not None and "probabilities differ" in problem


def test_nan_probabilities_are_refused() -> None:
    baseline = Fidelity(test_accuracy=0.9, agreement=1.0, max_probability_diff=0.0)
    broken = Fidelity(test_accuracy=0.9, agreement=1.0, max_probability_diff=float("nan"))
    assert parity_problem("OpenVINO", broken, baseline) is not None


def test_with_tta_the_mirror_images_count_for_the_probability_bound_and_accuracy(reference) -> None:
    outputs, labels = reference
    with_mirror = Outputs(outputs.plain, outputs.plain.copy())
    skewed_mirror = with_mirror.mirrored.copy()
    skewed_mirror[5, 3] += 1e-3
    candidate = Outputs(outputs.plain, skewed_mirror)
    measured = fidelity(candidate, with_mirror, labels)
    assert measured.max_probability_diff == pytest.approx(1e-3)
    np.testing.assert_allclose(with_mirror.predicted(), outputs.plain)
