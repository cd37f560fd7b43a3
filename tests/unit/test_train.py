"""The engine really learns, is reproducible on CPU and stops on divergence; the sweep picks the right best run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fashion_mlops.config import TrainConfig
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.data.sample import write_sample_dataset
from fashion_mlops.data.splits import Splits, load_split, train_val_split
from fashion_mlops.models import build_model
from fashion_mlops.train import (
    EpochResult,
    TrainingDiverged,
    augment,
    evaluate,
    pick_device,
    precision_choice,
    predict_logits,
    resolved_settings,
    train,
    uses_bf16,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory) -> Splits:
    """320 training and 80 validation images of the synthetic ten-class sample, read back from real IDX files."""
    directory = tmp_path_factory.mktemp("engine-sample")
    manifest = load_manifest(write_sample_dataset(directory, n_train=400, n_test=10, seed=11, gz=False))
    return train_val_split(load_split(manifest, directory, "train"), val_size=80, seed=0)


def tiny_config(**overrides) -> TrainConfig:
    settings = {"epochs": 3, "seed": 0, "lr": 0.01, "batch_size": 32, "device": "cpu"} | overrides
    return TrainConfig(**settings)


def fresh_model(arch: str = "simple_cnn", seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(arch)


def test_training_on_the_synthetic_sample_really_learns(tiny_splits):
    seen: list[EpochResult] = []

    history = train(fresh_model(), tiny_splits, tiny_config(), CPU, on_epoch_end=lambda r, m: seen.append(r))

    assert [r.epoch for r in history] == [1, 2, 3]
    assert seen == history
    assert history[-1].val_accuracy >= 0.8, history  # chance is 0.1
    assert history[-1].loss < history[0].loss
    assert history[-1].val_loss < history[0].val_loss
    assert all(r.lr == 0.01 and r.epoch_duration_s > 0 for r in history)
    assert all(0.0 <= r.accuracy <= 1.0 and 0.0 <= r.val_accuracy <= 1.0 for r in history)


def test_two_runs_with_the_same_seed_give_bit_identical_metrics_on_cpu(tiny_splits):
    cfg = tiny_config(epochs=2, augment="crop_flip")

    def metrics(history: list[EpochResult]) -> list[dict]:
        return [{k: v for k, v in r.as_dict().items() if k != "epoch_duration_s"} for r in history]

    first = train(fresh_model(seed=3), tiny_splits, cfg, CPU)
    second = train(fresh_model(seed=3), tiny_splits, cfg, CPU)

    assert metrics(first) == metrics(second)


def test_different_training_seeds_shuffle_differently(tiny_splits):
    first = train(fresh_model(seed=3), tiny_splits, tiny_config(epochs=1, seed=1), CPU)
    second = train(fresh_model(seed=3), tiny_splits, tiny_config(epochs=1, seed=2), CPU)

    assert first[0].loss != second[0].loss


class NaNModel(nn.Module):
    """A model whose output is NaN: its training loss can never be finite."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(28 * 28, 10)

    def forward(self, x):
        return self.linear(x.flatten(1)) * float("nan")


def test_a_model_producing_nan_makes_training_raise_training_diverged(tiny_splits):
    seen: list[EpochResult] = []

    with pytest.raises(TrainingDiverged, match=r"nan.*epoch 1"):
        train(NaNModel(), tiny_splits, tiny_config(epochs=2), CPU, on_epoch_end=lambda r, m: seen.append(r))

    assert seen == []  # no epoch is reported once the loss is not finite


def test_training_diverged_is_caught_by_the_sweep_as_a_runtime_error():
    assert issubclass(TrainingDiverged, RuntimeError)


@pytest.mark.parametrize("kind", ["flip", "crop_flip"])
def test_augment_keeps_shape_and_dtype_and_is_seeded(kind):
    x = torch.rand(64, 1, 28, 28)

    first = augment(x, kind, torch.Generator().manual_seed(5))
    second = augment(x, kind, torch.Generator().manual_seed(5))
    other = augment(x, kind, torch.Generator().manual_seed(6))

    assert first.shape == x.shape
    assert first.dtype == x.dtype
    assert torch.equal(first, second)
    assert not torch.equal(first, other)
    assert not torch.equal(first, x)


def test_flip_augmentation_mirrors_some_images_and_leaves_the_rest():
    x = torch.rand(64, 1, 28, 28)

    out = augment(x, "flip", torch.Generator().manual_seed(0))

    flipped = [torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)]
    kept = [torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 64


def test_crop_flip_augmentation_only_shifts_by_at_most_the_padding():
    x = torch.zeros(32, 1, 28, 28)
    x[:, :, 12:16, 12:16] = 1.0  # a centred 4x4 square survives any shift of up to 2 pixels

    out = augment(x, "crop_flip", torch.Generator().manual_seed(0), pad=2)

    assert torch.all(out.sum(dim=(1, 2, 3)) == 16)
    assert torch.all(out[:, :, :10, :] == 0) and torch.all(out[:, :, 18:, :] == 0)
    assert torch.all(out[:, :, :, :10] == 0) and torch.all(out[:, :, :, 18:] == 0)
    assert len({tuple(o.nonzero()[0].tolist()) for o in out}) > 1  # the square does move


@pytest.mark.parametrize("tta_flip", [False, True])
def test_predict_logits_returns_log_probabilities(tiny_splits, tta_flip):
    model = fresh_model()

    log_probs = predict_logits(model, tiny_splits.val.images, batch_size=30, tta_flip=tta_flip)

    assert log_probs.shape == (80, 10)
    assert torch.all(log_probs <= 0)
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(80), atol=1e-5, rtol=0)
    assert not model.training


def test_tta_flip_averages_the_image_and_its_mirror(tiny_splits):
    model = fresh_model().eval()
    images = tiny_splits.val.images[:8]

    with torch.no_grad():
        x = images.float() / 255
        expected = ((model(x).softmax(1) + model(x.flip(-1)).softmax(1)) / 2).log()

    torch.testing.assert_close(predict_logits(model, images, batch_size=3, tta_flip=True), expected)


def test_evaluate_batches_do_not_change_the_result(tiny_splits):
    model = fresh_model()

    assert evaluate(model, tiny_splits.val, batch_size=7) == pytest.approx(
        evaluate(model, tiny_splits.val, batch_size=80)
    )


# select_best -------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_training_on_cuda_in_bf16_learns_and_reports_the_cuda_device(tiny_splits):
    device = pick_device("auto")
    history = train(fresh_model("vgg_bn_small"), tiny_splits, tiny_config(epochs=3, device="auto"), device)

    assert device.type == "cuda" and uses_bf16("auto", device)
    assert history[-1].val_accuracy > 0.5


# precision -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"),
    [
        (False, False, (False, "without AVX512-BF16 or AMX: fp32")),
        (False, True, (True, "with AVX512-BF16: bf16")),
        (True, True, (True, "with AMX: bf16")),
    ],
)
def test_auto_precision_takes_bf16_on_a_cpu_only_where_it_is_native(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)

    bf16, why = precision_choice("auto", CPU)

    assert (bf16, why.split("CPU ")[1]) == expected
    assert uses_bf16("auto", CPU) == expected[0]
    assert resolved_settings(tiny_config(precision="auto"), threads=1)["bf16"] == expected[0]


def test_an_explicit_precision_is_taken_on_any_cpu(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    assert precision_choice("fp32", CPU) == (False, "train.precision: fp32")
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    assert precision_choice("bf16", CPU) == (True, "train.precision: bf16")


def test_no_config_hard_codes_bf16():
    from helpers import REPO_ROOT

    for path in [REPO_ROOT / "params.yaml", *sorted((REPO_ROOT / "configs").glob("*.yaml"))]:
        assert "precision: bf16" not in path.read_text(), path
