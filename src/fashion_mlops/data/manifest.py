"""Dataset manifests: which files make up a dataset, their expected size and SHA-256, and the class names."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from fashion_mlops.errors import ManifestError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
# a name joined to data.dir must stay in data.dir: no separators, no '..', no hidden or temp-file names
PLAIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ExpectedFile:
    """One file of a dataset, as it must look once decompressed; checked on construction."""

    role: str
    name: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not PLAIN_NAME.fullmatch(self.name):
            raise ManifestError(
                f"files.{self.role}.name {self.name!r} is not a plain file name; allowed: 1 to 128 of A-Z a-z 0-9 . _ -"
                ", not starting with '.', '_' or '-'"
            )
        if not isinstance(self.sha256, str) or not SHA256_HEX.fullmatch(self.sha256):
            raise ManifestError(f"files.{self.role}.sha256 is not a SHA-256 hex digest (64 of 0-9 a-f)")
        # bool is an int to Python, but `"size": true` is a typo, not a size
        if type(self.size) is not int or self.size <= 0:
            raise ManifestError(
                f"files.{self.role}.size {self.size!r} is not a positive integer; it must be the decompressed size "
                "in bytes (it also caps how much a download may write)"
            )


@dataclass(frozen=True)
class Manifest:
    """A dataset in MNIST format: four IDX files and the class names."""

    name: str
    classes: tuple[str, ...]
    files: tuple[ExpectedFile, ...]

    def file(self, role: str) -> ExpectedFile:
        return next(f for f in self.files if f.role == role)

    def digest(self) -> str:
        """A short digest of the dataset's content, from the expected checksums."""
        return content_digest(f.sha256 for f in self.files)


def content_digest(sha256s: Iterable[str]) -> str:
    """The dataset digest from its files' SHA-256s in role order (expected ones here, measured ones in `verify`)."""
    return hashlib.sha256("".join(sha256s).encode()).hexdigest()[:16]


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest JSON file; errors name the file and the bad entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"data.manifest: {path} not found; point it at a dataset manifest JSON") from None
    except json.JSONDecodeError as error:
        raise ManifestError(f"data.manifest: {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    except UnicodeDecodeError:
        raise ManifestError(f"data.manifest: {path} is not UTF-8 text; point it at a dataset manifest JSON") from None
    except OSError as error:
        raise ManifestError(f"data.manifest: cannot read {path} ({error.strerror}); point it at a JSON file") from None
    try:
        entries = [(role, raw["files"][role]) for role in ROLES]
        fields = [(role, entry["name"], entry["sha256"], entry.get("size")) for role, entry in entries]
        classes = tuple(raw["classes"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ManifestError(
            f"data.manifest: {path} lacks {error}; it needs 'classes' and 'files' with {', '.join(ROLES)}, "
            "each with 'name', 'sha256' and 'size'"
        ) from None
    try:
        files = tuple(
            ExpectedFile(role, name, sha256.lower() if isinstance(sha256, str) else sha256, size)
            for role, name, sha256, size in fields
        )
    except ManifestError as error:
        raise ManifestError(f"data.manifest: {path}: {error}") from None
    for i, f in enumerate(files):
        if other := next((o for o in files[:i] if o.name == f.name), None):
            raise ManifestError(
                f"data.manifest: {path}: files.{f.role}.name {f.name!r} is also files.{other.role}.name; "
                "each role needs its own file"
            )
    return Manifest(name=str(raw.get("name", path.stem)), classes=classes, files=files)
