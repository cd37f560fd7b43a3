"""Dataset manifests: which files make up a dataset, their expected SHA-256 and class names."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fashion_mlops.errors import ManifestError

ROLES = ("train_images", "train_labels", "test_images", "test_labels")


@dataclass(frozen=True)
class ExpectedFile:
    """One file of a dataset, as it must look once decompressed."""

    role: str
    name: str
    sha256: str
    size: int | None = None


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
        import hashlib

        joined = "".join(f.sha256 for f in self.files)
        return hashlib.sha256(joined.encode()).hexdigest()[:16]


def load_manifest(path: str | Path) -> Manifest:
    """Read a manifest JSON file; errors name the file and the bad entry."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"data.manifest: {path} not found; point it at a dataset manifest JSON") from None
    except json.JSONDecodeError as error:
        raise ManifestError(f"data.manifest: {path} is not valid JSON ({error.msg}, line {error.lineno})") from None
    try:
        files = tuple(
            ExpectedFile(role, entry["name"], entry["sha256"].lower(), entry.get("size"))
            for role, entry in ((role, raw["files"][role]) for role in ROLES)
        )
        classes = tuple(raw["classes"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ManifestError(
            f"data.manifest: {path} lacks {error}; it needs 'classes' and 'files' with {', '.join(ROLES)}"
        ) from None
    for f in files:
        if len(f.sha256) != 64 or any(c not in "0123456789abcdef" for c in f.sha256):
            raise ManifestError(f"data.manifest: {path}: files.{f.role}.sha256 is not a SHA-256 hex digest")
    return Manifest(name=str(raw.get("name", path.stem)), classes=classes, files=files)
