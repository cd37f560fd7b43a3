"""CNN architectures for 1x28x28 images, chosen by name."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

NUM_CLASSES = 10


class SimpleCNN(nn.Module):
    """The tutorial's network: conv 1->6 5x5, conv 6->12 5x5 (ReLU + max-pool 2 each), 192->120->60->10."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 12, kernel_size=5)
        self.fc1 = nn.Linear(12 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 60)
        self.out = nn.Linear(60, num_classes)
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.pool(self.relu(self.conv1(x)))
        x = self.pool(self.relu(self.conv2(x)))
        x = x.flatten(1)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.out(x)


def _conv_bn_relu(in_channels: int, out_channels: int, pool_first: bool = False) -> list[nn.Module]:
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)
    pool = [nn.MaxPool2d(2)] if pool_first else []
    return [conv, *pool, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class VggBN(nn.Module):
    """A VGG-style CNN with BatchNorm: blocks of 3x3 conv-BN-ReLU, each block ending in max-pool 2.

    With `pool_first` (one conv per block) the max-pool comes straight after the convolution: BatchNorm and ReLU,
    memory-bound on the CPU, then work on a quarter of the pixels.
    """

    def __init__(
        self,
        blocks: tuple[tuple[int, ...], ...],
        dropout: float,
        num_classes: int = NUM_CLASSES,
        pool_first: bool = False,
    ):
        super().__init__()
        if pool_first and any(len(block) != 1 for block in blocks):
            raise ValueError("pool_first needs one convolution per block")
        layers: list[nn.Module] = []
        channels = 1
        for block in blocks:
            for width in block:
                layers += _conv_bn_relu(channels, width, pool_first)
                channels = width
            if not pool_first:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        side = 28 >> len(blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * side * side, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


# Every architecture a params file may name (model.arch, or arch in sweep.grid): add one here and it can be swept.
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "simple_cnn": SimpleCNN,
    # 3 blocks of one conv each (32/64/128 channels)
    "vgg_bn_small": lambda: VggBN(blocks=((32,), (64,), (128,)), dropout=0.2),
    # 3 blocks of one conv each (24/48/96 channels), max-pool before BN-ReLU: the default pipeline's, about half
    # the CPU time of vgg_bn_small per epoch
    "vgg_bn_lean": lambda: VggBN(blocks=((24,), (48,), (96,)), dropout=0.2, pool_first=True),
    # 3 blocks, two convs in the wider blocks (32 / 64,64 / 128,128): slower, more accurate
    "vgg_bn_medium": lambda: VggBN(blocks=((32,), (64, 64), (128, 128)), dropout=0.3),
}


def check_arch(arch: str) -> str:
    """Return `arch` if it names a known architecture, else raise ValueError listing the allowed names."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURES))}")
    return arch


def build_model(arch: str) -> nn.Module:
    """A freshly initialised network of the named architecture."""
    return ARCHITECTURES[check_arch(arch)]()
