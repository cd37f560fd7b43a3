"""Facts stated once: dvc.yaml's code deps and report paths are what the package really runs and writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fashion_mlops import sources
from fashion_mlops.export.stage import ONNX_FILE, OPENVINO_DIR
from fashion_mlops.reports import Reports
from helpers import REPO_ROOT

DVC_YAML = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())


def declared(stage: str, section: str) -> list[str]:
    """The paths a stage lists under `section` (entries are plain paths or one-key mappings of path -> options)."""
    entries = DVC_YAML["stages"][stage].get(section, [])
    return [entry if isinstance(entry, str) else next(iter(entry)) for entry in entries]


@pytest.mark.parametrize("stage", sorted(sources.STAGE_MODULES))
def test_each_stage_depends_on_exactly_the_package_files_its_module_imports(stage: str) -> None:
    code_deps = [dep for dep in declared(stage, "deps") if dep.startswith("src/")]
    expected = sources.stage_sources(stage)

    assert code_deps == expected, f"paste into dvc.yaml's {stage} deps:\n" + "\n".join(f"  - {p}" for p in expected)


def test_stage_sources_include_late_imports_and_the_packages_they_live_in() -> None:
    sweep = sources.stage_sources("train_sweep")

    assert "src/fashion_mlops/tracking/exporter.py" in sweep
    assert "src/fashion_mlops/models.py" in sweep  # imported late by config's architecture check
    assert "src/fashion_mlops/tracking/__init__.py" in sweep
    assert "src/fashion_mlops/evaluate.py" not in sweep
    assert all((REPO_ROOT / path).is_file() for path in sweep)


def test_the_code_version_in_resume_fingerprints_hashes_the_stage_sources(tmp_path: Path, monkeypatch) -> None:
    before = sources.code_version.__wrapped__("train_sweep")
    copy = tmp_path / "fashion_mlops"
    for path in sources.PACKAGE_DIR.rglob("*.py"):
        target = copy / path.relative_to(sources.PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
    monkeypatch.setattr(sources, "PACKAGE_DIR", copy)
    assert sources.code_version.__wrapped__("train_sweep") == before

    (copy / "evaluate.py").write_text("# evaluate is not part of train_sweep\n")
    assert sources.code_version.__wrapped__("train_sweep") == before
    (copy / "train.py").write_text((copy / "train.py").read_text() + "\n# a change\n")
    assert sources.code_version.__wrapped__("train_sweep") != before


def test_dvc_yaml_names_the_report_paths_the_stages_write() -> None:
    reports = Reports()
    sweep_outputs = {
        *declared("train_sweep", "outs"),
        *declared("train_sweep", "metrics"),
        *declared("train_sweep", "plots"),
    }
    evaluate_outputs = {*declared("evaluate", "outs"), *declared("evaluate", "metrics"), *declared("evaluate", "plots")}

    assert sweep_outputs == {str(path) for path in reports.sweep_outputs()}
    assert evaluate_outputs == {str(path) for path in reports.evaluate_outputs()}
    assert str(reports.best_run) in declared("evaluate", "deps")
    assert declared("check_store", "outs") == [str(reports.store)]
    assert str(reports.store) in declared("train_sweep", "deps")  # so check_store runs before the sweep
    assert DVC_YAML["stages"]["check_store"].get("always_changed") is True
    # a new champion (evaluate rewrites champion.json) reruns export, which writes the models and its report
    assert str(reports.champion) in declared("export", "deps")
    assert declared("export", "metrics") == [str(reports.export)]
    assert set(declared("export", "outs")) == {ONNX_FILE.as_posix(), OPENVINO_DIR.as_posix()}


PARAMS_FILES = [
    "params.yaml",
    *sorted(p.relative_to(REPO_ROOT).as_posix() for p in (REPO_ROOT / "configs").glob("*.yaml")),
]


MISSING = object()


@pytest.mark.parametrize("params_file", PARAMS_FILES)
def test_every_params_file_holds_every_param_a_stage_depends_on(params_file: str) -> None:
    """`dvc repro` with this file as params.yaml (`make repro-check`, `cp configs/tutorial.yaml params.yaml`) fails on
    the first stage whose params are missing, even where the code has defaults for them."""
    params = yaml.safe_load((REPO_ROOT / params_file).read_text())
    missing = []
    for stage in DVC_YAML["stages"]:
        for dotted in declared(stage, "params"):
            node = params
            for key in dotted.split("."):
                node = node[key] if isinstance(node, dict) and key in node else MISSING
            if node is MISSING:
                missing.append(f"{stage}: {dotted}")
    assert not missing, missing
