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


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class VggBN(nn.Module):
    """A VGG-style CNN with BatchNorm: blocks of 3x3 conv-BN-ReLU, each block ending in max-pool 2."""

    def __init__(self, blocks: tuple[tuple[int, ...], ...], dropout: float, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 1
        for block in blocks:
            for width in block:
                layers += _conv_bn_relu(channels, width)
                channels = width
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
