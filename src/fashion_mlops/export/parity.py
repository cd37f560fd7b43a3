"""Parity of an exported model with PyTorch on the test set: enforced, not just reported."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fashion_mlops.errors import UserError
from fashion_mlops.inference.runtimes import Outputs

MIN_AGREEMENT = 0.9995  # share of test images whose predicted class equals PyTorch's
MAX_ACCURACY_DIFF = 0.0005  # 0.05 percentage points of test accuracy
MAX_PROBABILITY_DIFF = 1e-4  # largest absolute difference of any class probability


class ParityFailed(UserError):
    """An exported model does not compute what the PyTorch model computes."""


@dataclass(frozen=True)
class Fidelity:
    test_accuracy: float
    agreement: float
    max_probability_diff: float

    def as_dict(self) -> dict[str, float]:
        return {
            "test_accuracy": self.test_accuracy,
            "agreement": self.agreement,
            "max_probability_diff": self.max_probability_diff,
        }


def fidelity(outputs: Outputs, reference: Outputs, labels: np.ndarray) -> Fidelity:
    """Test accuracy of `outputs`, and how closely they follow the `reference` (PyTorch's) on every image."""
    pairs = [(outputs.plain, reference.plain)]
    if outputs.mirrored is not None and reference.mirrored is not None:
        pairs.append((outputs.mirrored, reference.mirrored))
    predicted, expected = outputs.predicted().argmax(1), reference.predicted().argmax(1)
    return Fidelity(
        test_accuracy=float(np.mean(predicted == labels)) if len(labels) else 0.0,
        agreement=float(np.mean(predicted == expected)) if len(labels) else 1.0,
        max_probability_diff=max((float(np.abs(a - b).max(initial=0.0)) for a, b in pairs), default=0.0),
    )


def parity_problem(runtime: str, measured: Fidelity, reference: Fidelity) -> str | None:
    """None if `runtime` is within every parity bound of PyTorch, else what it missed, in one phrase."""
    accuracy_diff = abs(measured.test_accuracy - reference.test_accuracy)
    if measured.agreement < MIN_AGREEMENT:
        share = f"{measured.agreement:.4%}"
        return f"{runtime} agrees with PyTorch on {share} of test images (at least {MIN_AGREEMENT:.2%})"
    if accuracy_diff > MAX_ACCURACY_DIFF:
        return (
            f"{runtime}'s test accuracy {measured.test_accuracy:.4%} differs from PyTorch's "
            f"{reference.test_accuracy:.4%} by more than {MAX_ACCURACY_DIFF:.2%}"
        )
    if not measured.max_probability_diff <= MAX_PROBABILITY_DIFF:  # also catches NaN
        return (
            f"{runtime}'s class probabilities differ from PyTorch's by up to {measured.max_probability_diff:.2e} "
            f"(at most {MAX_PROBABILITY_DIFF:.0e})"
        )
    return None
