"""Which code made a result: the source files each DVC stage runs, and the git commit they came from.

A stage's code is its module and every package module it imports, at the top or late inside a function, found by
reading the imports. dvc.yaml lists exactly these files as the stage's deps (a test checks the two agree and prints
the list to paste), and resume fingerprints hash the same files: a change reruns the stage in DVC exactly when it
stops earlier MLflow runs from being reused.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import subprocess
from pathlib import Path

PACKAGE = "fashion_mlops"
PACKAGE_DIR = Path(__file__).parent
STAGE_MODULES = {
    "download": "fashion_mlops.data.download",
    "check_store": "fashion_mlops.store_check",
    "train_sweep": "fashion_mlops.sweep",
    "evaluate": "fashion_mlops.evaluate",
    "export": "fashion_mlops.export.stage",
}


def module_path(module: str) -> Path | None:
    """The file of a package module or subpackage, or None for anything outside the package."""
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = PACKAGE_DIR.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports anywhere in its code, and the packages those live in (Python runs their
    __init__ first)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return {".".join(m.split(".")[:depth]) for m in found for depth in range(1, m.count(".") + 2)}


def closure(module: str) -> list[Path]:
    """`module`'s file and the files of every package module it imports, directly or not, sorted."""
    seen: set[Path] = set()
    pending = [module, *imported_modules_of_parents(module)]
    while pending:
        path = module_path(pending.pop())
        if path is not None and path not in seen:
            seen.add(path)
            pending.extend(imported_modules(path))
    return sorted(seen)


def imported_modules_of_parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:depth]) for depth in range(1, len(parts))]


def stage_sources(stage: str) -> list[str]:
    """The source files of a DVC stage, as dvc.yaml lists them (relative to the repository root)."""
    root = PACKAGE_DIR.parent.parent
    return [path.relative_to(root).as_posix() for path in closure(STAGE_MODULES[stage])]


@functools.cache
def code_version(stage: str = "train_sweep") -> str:
    """A digest of a stage's source files (names and bytes)."""
    digest = hashlib.sha256()
    for path in closure(STAGE_MODULES[stage]):
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def git_commit() -> tuple[str | None, bool]:
    """(HEAD commit, whether tracked files have uncommitted changes), or (None, False) outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None, False
    return commit.strip(), bool(dirty.strip())
