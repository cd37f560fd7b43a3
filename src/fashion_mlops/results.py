"""What one epoch of training measured; plain data, shared by the engine, the sweep and the tracker process."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class EpochResult:
    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_duration_s: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


EPOCH_KEYS = tuple(k for k in EpochResult.__dataclass_fields__ if k != "epoch")
