"""One training run on in-memory tensors: epochs, evaluation and metrics. No tracking in here."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fashion_mlops import distributed
from fashion_mlops.config import TrainConfig
from fashion_mlops.data.splits import Split, Splits

DIVERGENCE_CHECK_EVERY = 50  # steps between host syncs that catch a NaN/inf loss early


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite."""


class TrialPruned(Exception):
    """A search's pruner stopped this run after an epoch: its validation accuracy was poor against the others'."""


@dataclass(frozen=True)
class EpochResult:
    """What one epoch measured. A new per-epoch metric is a field here, filled in `train`: MLflow, TensorBoard
    (under `tracking.tensorboard.SCALARS`, if it should appear there too) and reports/sweep.csv pick it up."""

    epoch: int
    loss: float
    accuracy: float
    val_loss: float
    val_accuracy: float
    lr: float
    epoch_duration_s: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def metric_names(cls) -> tuple[str, ...]:
        return tuple(name for name in cls.__dataclass_fields__ if name != "epoch")


EpochCallback = Callable[[EpochResult, nn.Module], None]


def pick_device(requested: str = "auto") -> torch.device:
    """CUDA, then MPS, then CPU, unless a device is asked for by name."""
    if requested != "auto":
        return torch.device(requested)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def to_float(images: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """uint8 N x 1 x 28 x 28 -> float32 in [0, 1], the models' input format."""
    x = images.float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def augment(
    x: torch.Tensor,
    kind: str,
    generator: torch.Generator,
    pad: int = 2,
    part: slice = slice(None),
    of: int | None = None,
) -> torch.Tensor:
    """Random horizontal flip and (for crop_flip) random crop after zero-padding, per image, on tensors.

    `x` may be the images `part` of a batch of `of` (a rank's share): the random numbers are drawn for the whole
    batch and `part` of them used, so every rank's generator stays in step with a single process's.
    """
    n, device = len(x), x.device
    drawn = of or n
    if kind == "crop_flip":
        padded = F.pad(x, (pad, pad, pad, pad))
        shift = torch.randint(0, 2 * pad + 1, (2, drawn), generator=generator)[:, part].to(device)
        side = torch.arange(x.shape[-1], device=device)
        rows = (shift[0][:, None] + side)[:, :, None]
        cols = (shift[1][:, None] + side)[:, None, :]
        x = padded[torch.arange(n, device=device)[:, None, None], 0, rows, cols].unsqueeze(1)
    flip = (torch.rand(drawn, generator=generator) < 0.5)[part].to(device)
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, batch_size: int, channels_last: bool = False, tta_flip: bool = False
) -> torch.Tensor:
    """Log-probabilities for uint8 images, in batches; with `tta_flip`, averaged with the mirrored image."""
    set_eval_mode(model)
    outputs = []
    for start in range(0, len(images), batch_size):
        x = to_float(images[start : start + batch_size], channels_last)
        probs = model(x).float().softmax(1)
        if tta_flip:
            probs = (probs + model(x.flip(-1)).float().softmax(1)) / 2
        outputs.append(probs.clamp_min(1e-12).log())
    return torch.cat(outputs)


def set_eval_mode(model: nn.Module) -> None:
    """Switch to inference behaviour; a torch.export module loaded from MLflow is already frozen in it."""
    with contextlib.suppress(NotImplementedError):
        model.eval()


def evaluate(
    model: nn.Module, split: Split, batch_size: int = 1000, channels_last: bool = False, tta_flip: bool = False
) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) on a split."""
    log_probs = predict_logits(model, split.images, batch_size, channels_last, tta_flip)
    return loss_and_accuracy(log_probs, split.labels)


def loss_and_accuracy(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy loss, accuracy) of log-probabilities against labels."""
    labels = labels.to(log_probs.device)
    loss = F.nll_loss(log_probs, labels).item()
    accuracy = (log_probs.argmax(1) == labels).float().mean().item()
    return loss, accuracy


def uses_bf16(precision: str, device: torch.device) -> bool:
    """bf16 autocast when asked; with `auto`, on CUDA and on a CPU with native bf16 instructions."""
    return precision_choice(precision, device)[0]


def precision_choice(precision: str, device: torch.device) -> tuple[bool, str]:
    """(whether training autocasts to bf16, and why), for `train.precision` on `device`."""
    if precision != "auto":
        return precision == "bf16", f"train.precision: {precision}"
    if device.type == "cuda":
        return True, "auto on CUDA: bf16"
    if device.type != "cpu":
        return False, f"auto on {device.type}: fp32"
    native = native_bf16_cpu()
    if native:
        return True, f"auto on a CPU with {native}: bf16"
    # emulated bf16 (AVX2, AVX-512 without BF16) converts every operand and runs slower than fp32
    return False, "auto on a CPU without AVX512-BF16 or AMX: fp32"


def native_bf16_cpu() -> str | None:
    """The instructions that make bf16 fast on this CPU (AMX, AVX512-BF16), or None."""
    checks = {"AMX": "_is_amx_tile_supported", "AVX512-BF16": "_is_avx512_bf16_supported"}
    for name, check in checks.items():
        supported = getattr(torch.cpu, check, None)
        if supported is not None and supported():
            return name
    return None


def resolved_settings(cfg: TrainConfig, threads: int) -> dict[str, object]:
    """How this machine resolves what `cfg` leaves open: the device, bf16 or not, the CPU threads, and (under
    torchrun) how many processes train together."""
    device = pick_device(cfg.device)
    settings: dict[str, object] = {"device": device.type, "bf16": uses_bf16(cfg.precision, device), "threads": threads}
    ranks = distributed.world().size
    if ranks > 1:  # DDP's results differ from one process's; left out for one, so its fingerprints stay as they were
        settings["world_size"] = ranks
    return settings


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """The optimizer, with its fused kernel (one op for all parameters) where the device has one."""
    fused = device.type in ("cpu", "cuda")
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            weight_decay=cfg.weight_decay,
            nesterov=cfg.momentum > 0,
            fused=fused,
        )
    optimizer = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused)


def train(
    model: nn.Module, data: Splits, cfg: TrainConfig, device: torch.device, on_epoch_end: EpochCallback | None = None
) -> list[EpochResult]:
    """Train `model` for `cfg.epochs` on `data.train`, measuring `data.val` after every epoch.

    Under torchrun (DDP) every rank walks the same shuffled order and trains on its share of each batch
    (`batch[rank::ranks]`); the gradients, losses and counts are summed over the ranks, so the metrics are those of
    the whole data on every rank.
    """
    launched = distributed.world()
    ranks, rank = launched.size, launched.rank
    distributed.per_rank_batch(cfg.batch_size, ranks)  # refuses a batch that does not split evenly among them
    share = slice(rank, None, ranks)  # this rank's images of each batch; all of them in one process
    generator = torch.Generator().manual_seed(cfg.seed)
    channels_last = cfg.channels_last and device.type != "mps"
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    net = distributed.data_parallel(model, device)
    if rank:  # dropout masks: each rank its own (rank 0 keeps the caller's seed, like one process)
        torch.manual_seed(cfg.seed + rank)
    step_fn = torch.compile(net) if cfg.compile else net
    train_split, val_split = data.train.to(device), data.val.to(device)
    n = len(train_split)
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    optimizer = make_optimizer(model, cfg, device)
    scheduler = (
        torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
        if cfg.schedule == "onecycle"
        else None
    )
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16(cfg.precision, device))
    history = []
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        net.train()
        order = torch.randperm(n, generator=generator) if cfg.shuffle else torch.arange(n)
        order = order.to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        lr = optimizer.param_groups[0]["lr"]
        for step, start in enumerate(range(0, n, cfg.batch_size), start=1):
            distributed.check_interrupts()
            whole = order[start : start + cfg.batch_size]
            batch = whole[share]
            x = to_float(train_split.images[batch], channels_last)
            y = train_split.labels[batch]
            if cfg.augment != "none":
                x = augment(x, cfg.augment, generator, part=share, of=len(whole))
            with autocast:
                logits = step_fn(x)
                loss = batch_loss(logits, y, cfg.label_smoothing, len(whole), ranks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if scheduler is not None:
                scheduler.step()
            loss_sum += loss.detach() * (len(whole) / ranks)
            correct += (logits.argmax(1) == y).sum()
            if step % DIVERGENCE_CHECK_EVERY == 0:  # decided on the sum over the ranks: all stop, or none
                _check_finite(distributed.all_sum(loss_sum.clone()), epoch, step)
        totals = distributed.all_sum(torch.stack([loss_sum.double(), correct.double()]))
        _check_finite(totals[0], epoch, steps_per_epoch)
        distributed.sync_buffers(model)  # every rank validates the model rank 0 logs
        with autocast:  # validation in the precision the model trains in: bf16 halves its time where it pays
            val_loss, val_accuracy = validate(model, val_split, channels_last, share)
        result = EpochResult(
            epoch=epoch,
            loss=totals[0].item() / n,
            accuracy=totals[1].item() / n,
            val_loss=val_loss,
            val_accuracy=val_accuracy,
            lr=lr,
            epoch_duration_s=time.perf_counter() - started,
        )
        history.append(result)
        if on_epoch_end is not None:
            on_epoch_end(result, model)
    return history


def batch_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float, images: int, ranks: int
) -> torch.Tensor:
    """The batch's mean cross-entropy. Under DDP, which averages the ranks' gradients, each rank's summed loss is
    scaled by ranks / `images` (the whole batch), so the average is one process's gradient, even for a last batch
    that does not split evenly."""
    if ranks == 1:
        return F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
    summed = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing, reduction="sum")
    return summed * (ranks / images)


def validate(model: nn.Module, split: Split, channels_last: bool, share: slice) -> tuple[float, float]:
    """(mean loss, accuracy) on the whole of `split`; under DDP each rank measures its `share` and the sums are
    added."""
    if not distributed.active():
        return evaluate(model, split, channels_last=channels_last)
    log_probs = predict_logits(model, split.images[share], 1000, channels_last)
    labels = split.labels[share].to(log_probs.device)
    sums = torch.stack([F.nll_loss(log_probs, labels, reduction="sum"), (log_probs.argmax(1) == labels).sum()])
    loss_sum, correct = distributed.all_sum(sums.double()).tolist()
    return loss_sum / len(split), correct / len(split)


def _check_finite(loss_sum: torch.Tensor, epoch: int, step: int) -> None:
    value = loss_sum.item()
    if not math.isfinite(value):
        raise TrainingDiverged(f"training loss became {value} at epoch {epoch}, step {step}")
