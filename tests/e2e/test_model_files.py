"""Logged models as untrusted files: model_files.load_logged_model loads a genuine model and refuses, before anything
is loaded, every model whose files could run code: code paths, shared objects, pickles, code in the program itself.

One simple_cnn is logged for real (exporter.log_model, pt2) into a SQLite store under a temporary directory; each
attack copies its artifacts and plants code that creates a marker file when it runs. Each control shows the attack
is real: MLflow's own loader under weights-only unpickling (what registry.load_logged_model did before model_files)
does run the planted code.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from fashion_mlops.models import ARCHITECTURES
from fashion_mlops.tracking import model_files
from fashion_mlops.tracking.model_files import (
    FORCE_WEIGHTS_ONLY,
    UntrustedModel,
    check_model_files,
    load_logged_model,
    weights_only_loading,
)

pytestmark = pytest.mark.slow

ROOT = "model"  # the folder torch.export.save puts every entry of model.pt2 in
# torch imports sympy only while it loads an exported program, after MLflow has put the model's code first on
# sys.path: a code path that holds a sympy.py runs in any fresh process that loads the model.
PLANTED_MODULE = "sympy"
SUBPROCESS_TIMEOUT_S = 300


@dataclass(frozen=True)
class Logged:
    uri: str
    module: Any  # the torch module that was logged
    images: np.ndarray  # the input example, uint8 N x 1 x 28 x 28
    model_dir: Path  # a downloaded copy of the logged artifacts
    experiment_id: str


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Logged]:
    import torch

    from fashion_mlops.models import build_model
    from fashion_mlops.tracking.exporter import log_model

    root = tmp_path_factory.mktemp("model-files")
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(f"sqlite:///{root}/mlflow.db")
    try:
        experiment_id = mlflow.create_experiment("model-files", artifact_location=str(root / "artifacts"))
        torch.manual_seed(0)
        module = build_model("simple_cnn").eval()
        images = np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28), dtype=np.uint8)
        run = MlflowClient().create_run(experiment_id)
        uri = log_model(run.info.run_id, copy.deepcopy(module), images)
        (root / "download").mkdir()
        model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(root / "download")))
        yield Logged(uri, module, images, model_dir, experiment_id)
    finally:
        mlflow.set_tracking_uri(previous)


def weights_only_mlflow_load(model_uri: str) -> Any:
    """The loader model_files replaces: MLflow's, with every torch.load forced weights-only."""
    with weights_only_loading():
        return mlflow.pytorch.load_model(model_uri)


def rewrite_archive(
    model_dir: Path, edit: Callable[[str, bytes], bytes] = lambda name, data: data, add: dict[str, bytes] | None = None
) -> None:
    """Pass each entry of the model's pt2 archive through `edit`, and append `add`."""
    archive = model_dir / "data/model.pt2"
    rewritten = io.BytesIO()
    with zipfile.ZipFile(archive) as original, zipfile.ZipFile(rewritten, "w") as out:
        for info in original.infolist():
            out.writestr(info, edit(info.filename, original.read(info)))
        for name, data in (add or {}).items():
            out.writestr(name, data)
    archive.write_bytes(rewritten.getvalue())


def tampered(
    source: Path,
    destination: Path,
    edit: Callable[[str, bytes], bytes] = lambda name, data: data,
    add: dict[str, bytes] | None = None,
) -> Path:
    """A copy of the model at `source` with its archive rewritten (see rewrite_archive)."""
    shutil.copytree(source, destination)
    rewrite_archive(destination, edit, add)
    return destination


class _RunsAShellCommand:
    """A pickle payload: unpickling it runs `touch <marker>`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def python_creating(marker: Path) -> str:
    """A Python expression that creates `marker`."""
    return f"__import__('pathlib').Path({str(marker)!r}).touch()"


# --- 1. a genuine model --------------------------------------------------------------------------------------------


def test_a_logged_model_loads_and_predicts_what_the_logged_module_predicts(logged: Logged) -> None:
    import torch

    model = load_logged_model(logged.uri)  # its private copy is gone once this returns

    images = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (7, 1, 28, 28), dtype=np.uint8))
    inputs = images.float() / 255.0
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), logged.module(inputs))


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_logs_a_model_the_inspection_accepts(logged: Logged, tmp_path: Path, arch: str) -> None:
    """The allow-lists (operators above all) cover what each architecture in models.ARCHITECTURES exports to."""
    from fashion_mlops.models import build_model
    from fashion_mlops.tracking.exporter import log_model

    uri = log_model(MlflowClient().create_run(logged.experiment_id).info.run_id, build_model(arch), logged.images)
    check_model_files(Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path))), uri)


# --- 2. code paths -------------------------------------------------------------------------------------------------

_LOAD_BOTH_WAYS = """
import contextlib, json, sys
from pathlib import Path
import mlflow.pytorch
from fashion_mlops.tracking.model_files import UntrustedModel, load_logged_model, weights_only_loading
model_dir, marker = sys.argv[1], Path(sys.argv[2])
refused = ""
try:
    load_logged_model(model_dir)
except UntrustedModel as error:
    refused = str(error)
ran_after_ours = marker.exists()
with contextlib.suppress(Exception), weights_only_loading():
    mlflow.pytorch.load_model(model_dir)
print(json.dumps({"refused": refused, "ran_after_ours": ran_after_ours, "ran_after_mlflow": marker.exists()}))
"""


def test_a_model_logged_with_code_paths_is_refused_and_its_code_never_runs(logged: Logged, tmp_path: Path) -> None:
    """MLflow puts a model's code directory first on sys.path; its modules then shadow any the process imports."""
    marker = tmp_path / "code-ran"
    planted = tmp_path / "src" / f"{PLANTED_MODULE}.py"
    planted.parent.mkdir()
    planted.write_text(f"{python_creating(marker)}\n")
    with mlflow.start_run(experiment_id=logged.experiment_id):
        uri = mlflow.pytorch.log_model(
            logged.module,
            name="model",
            input_example=logged.images.astype(np.float32) / 255.0,
            serialization_format="pt2",
            code_paths=[str(planted)],
            pip_requirements=["torch"],  # inferring them would run the model in a subprocess
            validate_serving_input=False,
        ).model_uri
    path_before = list(sys.path)

    with pytest.raises(UntrustedModel, match=r"refusing to load models:/m-\w+: its MLmodel declares code paths"):
        load_logged_model(uri)
    assert sys.path == path_before

    # In this process torch has imported sympy long ago, so a fresh one shows whether the planted module runs.
    model_dir = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path)))
    assert (model_dir / "code" / planted.name).exists()
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_BOTH_WAYS, str(model_dir), str(marker)],
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    outcome = json.loads(result.stdout.splitlines()[-1])
    assert "declares code paths" in outcome["refused"]
    assert outcome["ran_after_ours"] is False
    assert outcome["ran_after_mlflow"] is True  # the control: MLflow's weights-only loader ran the planted module


# --- 3. shared objects ---------------------------------------------------------------------------------------------


def test_a_pt2_archive_with_a_shared_object_is_refused(logged: Logged, tmp_path: Path) -> None:
    model_dir = tampered(logged.model_dir, tmp_path / "model", add={f"{ROOT}/data/aotinductor/model.so": b"\x7fELF"})

    with pytest.raises(UntrustedModel, match=r"entries a plain exported program does not \('model/data/aotinductor"):
        load_logged_model(str(model_dir))


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler to build the planted library")
def test_a_planted_aotinductor_library_runs_under_weights_only_loading_but_not_under_ours(
    logged: Logged, tmp_path: Path
) -> None:
    """torch.export.load dlopens an archive's AOTInductor libraries: a constructor in one runs at load."""
    marker = tmp_path / "code-ran"
    source = tmp_path / "planted.c"
    source.write_text(
        "#include <stdio.h>\n"
        "__attribute__((constructor)) static void planted(void) {\n"
        f'    FILE *f = fopen("{marker}", "w"); if (f) fclose(f);\n'
        "}\n"
    )
    library = tmp_path / "planted.so"
    subprocess.run(["cc", "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    aoti = f"{ROOT}/data/aotinductor/model/model.wrapper"  # the names torch looks for before it dlopens
    model_dir = tampered(
        logged.model_dir,
        tmp_path / "model",
        add={f"{aoti}.so": library.read_bytes(), f"{aoti}_metadata.json": b'{"AOTI_DEVICE_KEY": "cpu"}'},
    )

    with pytest.raises(UntrustedModel, match=r"aotinductor/model/model\.wrapper\.so"):
        load_logged_model(str(model_dir))
    assert not marker.exists()

    with contextlib.suppress(Exception):  # the control: the library's constructor runs; then loading fails
        weights_only_mlflow_load(str(model_dir))
    assert marker.exists()


# --- 4. pickles ----------------------------------------------------------------------------------------------------


def test_a_tampered_sample_inputs_pickle_is_refused_without_running_code(logged: Logged, tmp_path: Path) -> None:
    """torch.export.load retries a failed weights-only load of the sample inputs with a full unpickle, so MLflow's
    plain loader runs code planted there; weights-only loading stopped this one, and our inspection stops it first."""
    import torch

    marker = tmp_path / "code-ran"
    payload = io.BytesIO()
    torch.save(_RunsAShellCommand(marker), payload)
    replaced = []

    def plant(name: str, data: bytes) -> bytes:
        if name == f"{ROOT}/data/sample_inputs/model.pt":
            replaced.append(name)
            return payload.getvalue()
        return data

    model_dir = tampered(logged.model_dir, tmp_path / "model", plant)
    assert len(replaced) == 1

    with pytest.raises(UntrustedModel, match=r"sample_inputs/model\.pt unpickles 'posix\.system'"):
        load_logged_model(str(model_dir))
    assert not marker.exists()

    with pytest.raises(Exception, match=r"(?i)weights.only"):
        weights_only_mlflow_load(str(model_dir))
    assert not marker.exists()

    with contextlib.suppress(Exception):  # the control: MLflow's plain loader does run the planted code
        mlflow.pytorch.load_model(str(model_dir))
    assert marker.exists()


def is_pickle(data: bytes) -> bool:
    """A pickle of protocol 2 or later starts with PROTO (0x80) and its version number."""
    return len(data) > 1 and data[0] == 0x80 and 2 <= data[1] <= 5


def pickles_in(name: str, data: bytes) -> list[str]:
    """The pickles in the file `name`, looking into zip archives and archives inside them: 'file!entry!entry'."""
    if is_pickle(data) or name.endswith((".pkl", ".pickle")):
        return [name]
    if not zipfile.is_zipfile(io.BytesIO(data)):
        return []
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [found for entry in archive.namelist() for found in pickles_in(f"{name}!{entry}", archive.read(entry))]


def test_the_only_pickle_in_a_logged_model_is_its_archives_sample_inputs(logged: Logged) -> None:
    """torch.export.save writes weights as raw bytes but the sample inputs with torch.save (a zip with a pickle)."""
    files = sorted(p for p in logged.model_dir.rglob("*") if p.is_file())
    assert any(p.suffix == ".pt2" for p in files), files

    found = [hit for p in files for hit in pickles_in(p.relative_to(logged.model_dir).as_posix(), p.read_bytes())]

    assert found == [f"data/model.pt2!{ROOT}/data/sample_inputs/model.pt!archive/data.pkl"]


def test_loading_a_logged_model_unpickles_only_with_torchs_weights_only_unpickler(
    logged: Logged, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one pickle (the sample inputs) goes through one torch.load, asked for and forced to weights-only; no full
    unpickler (pickle's, or TorchScript's for custom objects) runs at all."""
    import torch

    loads: list[tuple[Any, str | None]] = []
    full_unpickles: list[str] = []
    torch_load = torch.load

    def recording_load(*args: Any, **kwargs: Any) -> Any:
        loads.append((kwargs.get("weights_only"), os.environ.get(FORCE_WEIGHTS_ONLY)))
        return torch_load(*args, **kwargs)

    def refusing(name: str) -> Callable[..., Any]:
        def unpickle(*args: Any, **kwargs: Any) -> Any:
            full_unpickles.append(name)
            raise AssertionError(f"{name} ran while loading a model")

        return unpickle

    monkeypatch.setattr(torch, "load", recording_load)
    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refusing(f"pickle.{name}"))
    monkeypatch.setattr(torch._C, "_pickle_load_obj", refusing("torch._C._pickle_load_obj"))

    load_logged_model(logged.uri)

    assert full_unpickles == []
    assert loads == [(True, "1")]


# --- 5. code in the archive's own files ----------------------------------------------------------------------------


def _symbolic_shape(marker: Path) -> tuple[Callable[[str, bytes], bytes], dict[str, bytes]]:
    """torch.export's deserializer hands each symbolic expression of model.json to sympy.sympify, an eval."""
    symbol = b"Symbol('s77', positive=True, integer=True)"

    def plant(name: str, data: bytes) -> bytes:
        if name == f"{ROOT}/models/model.json":
            assert symbol in data
            return data.replace(symbol, python_creating(marker).encode())
        return data

    return plant, {}


def _guard_code(marker: Path) -> tuple[Callable[[str, bytes], bytes], dict[str, bytes]]:
    """model.json's guards_code is compiled into the loaded module, which runs it on every call."""

    def plant(name: str, data: bytes) -> bytes:
        if name == f"{ROOT}/models/model.json":
            return json.dumps(json.loads(data) | {"guards_code": [f"{python_creating(marker)} is None"]}).encode()
        return data

    return plant, {}


def _opaque_constant(marker: Path) -> tuple[Callable[[str, bytes], bytes], dict[str, bytes]]:
    """torch.export.load reads an opaque constant with plain pickle.loads, which weights-only does not reach."""
    config = {"x": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}}

    def plant(name: str, data: bytes) -> bytes:
        if name == f"{ROOT}/data/constants/model_constants_config.json":
            return json.dumps({"config": config}).encode()
        return data

    return plant, {f"{ROOT}/data/constants/opaque_obj_0": pickle.dumps(_RunsAShellCommand(marker))}


@pytest.mark.parametrize(
    ("plant", "refusal"),
    [
        (_symbolic_shape, r"model\.json has a symbolic expression other than a batch size"),
        (_guard_code, r"model\.json carries guard code"),
        (_opaque_constant, r"entries a plain exported program does not \('model/data/constants/opaque_obj_0'\)"),
    ],
    ids=["symbolic-shape", "guard-code", "opaque-constant"],
)
def test_code_planted_in_the_archive_is_refused_though_weights_only_loading_runs_it(
    logged: Logged, tmp_path: Path, plant: Callable[..., Any], refusal: str
) -> None:
    import torch

    marker = tmp_path / "code-ran"
    edit, add = plant(marker)
    model_dir = tampered(logged.model_dir, tmp_path / "model", edit, add)

    with pytest.raises(UntrustedModel, match=refusal):
        load_logged_model(str(model_dir))
    assert not marker.exists()

    with contextlib.suppress(Exception):  # the control: weights-only unpickling does not stop it
        weights_only_mlflow_load(str(model_dir))(torch.rand(2, 1, 28, 28))
    assert marker.exists()


# --- 6. the allow-lists, one departure at a time (inspection only) -------------------------------------------------


def _pickled_weight(model_dir: Path) -> None:
    def edit(name: str, data: bytes) -> bytes:
        if name == f"{ROOT}/data/weights/model_weights_config.json":
            config = json.loads(data)
            config["config"]["conv1.bias"]["use_pickle"] = True  # torch.load-ed, not read as raw bytes
            return json.dumps(config).encode()
        return data

    rewrite_archive(model_dir, edit)


def _entries(**entries: bytes) -> Callable[[Path], None]:
    def change(model_dir: Path) -> None:
        with zipfile.ZipFile(model_dir / "data/model.pt2", "a") as archive:
            for name, data in entries.items():
                archive.writestr(name, data)

    return change


def _pickle_format(model_dir: Path) -> None:
    (model_dir / "data/model.pt2").rename(model_dir / "data/model.pth")


def _deflated(model_dir: Path) -> None:
    archive = model_dir / "data/model.pt2"
    rewritten = io.BytesIO()
    with zipfile.ZipFile(archive) as original, zipfile.ZipFile(rewritten, "w", zipfile.ZIP_DEFLATED) as out:
        for info in original.infolist():
            out.writestr(info.filename, original.read(info))
    archive.write_bytes(rewritten.getvalue())


def _mlmodel_code(model_dir: Path) -> None:
    mlmodel = model_dir / "MLmodel"
    mlmodel.write_text(mlmodel.read_text().replace("code: null", "code: code", 1))


DEPARTURES: dict[str, tuple[Callable[[Path], None], str]] = {
    "pickle format": (_pickle_format, r"holds no pt2 archive"),
    "code in MLmodel": (_mlmodel_code, r"its MLmodel declares code paths \('flavors\.pytorch\.code: code'\)"),
    "code directory": (lambda d: (d / "code").mkdir(), r"files a logged pt2 model does not \('code'\)"),
    "extra file": (lambda d: (d / "data/loader.py").write_text(""), r"does not \('data/loader\.py'\)"),
    "python entry": (_entries(**{f"{ROOT}/code/loader.py": b""}), r"does not \('model/code/loader\.py'\)"),
    "extra files entry": (_entries(**{f"{ROOT}/extra/x.txt": b""}), r"does not \('model/extra/x\.txt'\)"),
    "legacy weights": (_entries(**{f"{ROOT}/data/weights/model.pt": b""}), r"\('model/data/weights/model\.pt'\)"),
    "dot-dot entry": (_entries(**{f"{ROOT}/../loader.so": b""}), r"unsafe entry paths \('model/\.\./loader\.so'\)"),
    "absolute entry": (_entries(**{"/usr/lib/loader.so": b""}), r"unsafe entry paths \('/usr/lib/loader\.so'\)"),
    "other root": (_entries(other_root=b""), r"entries outside one root folder"),
    "duplicate entry": (_entries(**{f"{ROOT}/archive_format": b"pt2"}), r"duplicate entries"),
    "deflated entries": (_deflated, r"compressed or encrypted entries"),
    "pickled weight": (_pickled_weight, r"stores weight 'conv1\.bias' other than as raw tensor bytes"),
}


@pytest.mark.parametrize("departure", DEPARTURES, ids=list(DEPARTURES))
def test_a_model_that_departs_from_what_we_log_is_refused(logged: Logged, tmp_path: Path, departure: str) -> None:
    change, refusal = DEPARTURES[departure]
    model_dir = tmp_path / "model"
    shutil.copytree(logged.model_dir, model_dir)
    change(model_dir)

    with pytest.raises(UntrustedModel, match=refusal):
        check_model_files(model_dir, "models:/m-under-test")


@pytest.mark.parametrize(
    ("cap", "value", "refusal"),
    [("MAX_ENTRIES", 5, r"has 19 entries, more than 5"), ("MAX_ARCHIVE_BYTES", 1000, r"declares more than 1000 bytes")],
)
def test_an_archive_past_the_caps_is_refused_from_its_central_directory(
    logged: Logged, monkeypatch: pytest.MonkeyPatch, cap: str, value: int, refusal: str
) -> None:
    monkeypatch.setattr(model_files, cap, value)

    with pytest.raises(UntrustedModel, match=refusal):
        check_model_files(logged.model_dir, "models:/m-under-test")
