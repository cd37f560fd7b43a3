"""Architecture names, kept free of torch so params can be validated (and a sweep set up) before torch loads."""

from __future__ import annotations

# the builders live in models.py, one per name (a test checks the two agree)
ARCHITECTURE_NAMES = ("simple_cnn", "vgg_bn_small", "vgg_bn_medium")


def check_arch(arch: str) -> str:
    """Return `arch` if it names a known architecture, else raise ValueError listing the allowed names."""
    if arch not in ARCHITECTURE_NAMES:
        raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(sorted(ARCHITECTURE_NAMES))}")
    return arch
