"""End to end: export, serving and batch prediction of a model trained on the tiny sample dataset.

One module-scoped fixture runs the real commands (`fashion-mlops download`, `sweep`, `evaluate`, `export`) in a
temporary work directory with its own MLflow store. The tests read what they left: the exported files, the report,
the registry. Then they serve the champion (pt2 and ONNX) with a real `mlflow models serve` on 127.0.0.1 and predict
from files in each runtime, and compare both with evaluate's own predictions on the same images.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import onnx
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from fashion_mlops.config import load_params
from fashion_mlops.data.idx import read_idx
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.export import stage
from fashion_mlops.export.parity import ParityFailed
from fashion_mlops.reports import Reports
from fashion_mlops.tracking import tags
from helpers import VENV_BIN, free_port, stop_group, tiny_params, wait_for_http, write_params

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


@dataclass(frozen=True)
class Exported:
    """A work directory where one model was trained, evaluated and exported."""

    root: Path
    params: dict[str, Any]
    env: dict[str, str]

    @property
    def uri(self) -> str:
        return self.params["tracking"]["mlflow_uri"]

    def client(self) -> MlflowClient:
        return MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(VENV_BIN / "fashion-mlops"), *args],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
        assert not check or result.returncode == 0, f"{args} exited {result.returncode}:\n{result.stderr[-4000:]}"
        return result

    def report(self, name: str) -> Any:
        return json.loads((self.root / "reports" / name).read_text())

    def test_images(self) -> np.ndarray:
        manifest = load_manifest(Path(self.params["data"]["manifest"]))
        return read_idx(self.root / "data" / "raw" / manifest.file("test_images").name)

    def evaluate_predictions(self) -> list[str]:
        """The class evaluate predicted for each test image, in order (its confusion-matrix CSV)."""
        with (self.root / "reports" / "confusion_matrix.csv").open() as rows:
            return [row["predicted"] for row in csv.DictReader(rows)]


@pytest.fixture(scope="module")
def exported(sample_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Exported:
    root = tmp_path_factory.mktemp("export")
    params = tiny_params(sample_dataset, root, **{"sweep.grid": {"lr": [0.01]}, "train.epochs": 2})
    write_params(root / "params.yaml", params)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    work = Exported(root, params, env)
    for command in ("download", "sweep", "evaluate", "export"):
        work.run(command)
    return work


@pytest.fixture
def fluent_mlflow(exported: Exported) -> Iterator[None]:
    """Point this process's MLflow at the work directory's store for one test, then restore it."""
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(exported.uri)
    mlflow.set_registry_uri(exported.uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- the export stage ------------------------------------------------------------------------------------------


def test_export_writes_the_onnx_model_the_ir_and_a_report_of_three_runtimes_in_parity(exported: Exported) -> None:
    report = exported.report("export.json")
    evaluation = exported.report("evaluation.json")
    assert (exported.root / "models" / "champion.onnx").is_file()
    assert sorted(p.name for p in (exported.root / "models" / "openvino").iterdir()) == ["champion.bin", "champion.xml"]
    assert report["onnx"]["sha256"] == sha256(exported.root / "models" / "champion.onnx")
    assert set(report["runtimes"]) == {"torch", "onnx", "openvino"}
    assert report["test_images"] == len(exported.test_images())
    for runtime, figures in report["runtimes"].items():
        assert figures["agreement"] == 1.0, runtime
        assert figures["max_probability_diff"] <= 1e-4, runtime
        assert figures["test_accuracy"] == pytest.approx(evaluation["test_accuracy"], abs=1e-6), runtime
        assert 0 < figures["latency_ms_p50"] <= figures["latency_ms_p95"], runtime
        assert figures["images_per_s_batch256"] > 0, runtime
    assert report["model_version"] == evaluation["champion_version"]


def test_the_onnx_model_has_a_dynamic_batch_and_standard_operators_only(exported: Exported) -> None:
    model = onnx.load(str(exported.root / "models" / "champion.onnx"))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch.dim_param and not batch.dim_value, batch
    assert {entry.domain for entry in model.opset_import} <= {"", "ai.onnx"}
    ir = (exported.root / "models" / "openvino" / "champion.xml").read_text()
    assert 'element_type="f32"' in ir and 'element_type="f16"' not in ir  # weights kept in f32


def test_the_onnx_twin_is_registered_with_the_alias_and_each_version_names_the_other(exported: Exported) -> None:
    client = exported.client()
    name, alias = exported.params["registry"]["model_name"], exported.params["registry"]["alias"]
    source = client.get_model_version_by_alias(name, alias)
    twin = client.get_model_version_by_alias(f"{name}-onnx", alias)
    assert twin.tags[tags.SOURCE_VERSION] == str(source.version)
    assert source.tags[tags.ONNX_VERSION] == str(twin.version)
    assert twin.run_id == source.run_id
    assert twin.tags[tags.ONNX_SHA256] == exported.report("export.json")["onnx"]["sha256"]
    ir = {Path(f.path).name for f in client.list_artifacts(source.run_id, "openvino")}
    assert ir == {"champion.xml", "champion.bin"}
    assert client.get_run(source.run_id).info.status == "FINISHED"  # logging into the run did not reopen it


def test_the_logged_onnx_model_carries_a_signature_with_a_dynamic_batch(exported: Exported, fluent_mlflow) -> None:
    name, alias = exported.params["registry"]["model_name"], exported.params["registry"]["alias"]
    info = mlflow.models.get_model_info(f"models:/{name}-onnx@{alias}")
    assert set(info.flavors) == {"onnx", "python_function"}
    (spec,) = info.signature.inputs.inputs
    assert spec.name == "images" and spec.shape == (-1, 1, 28, 28)


def test_exporting_the_same_champion_again_reuses_its_onnx_version(exported: Exported) -> None:
    client = exported.client()
    twin_name = f"{exported.params['registry']['model_name']}-onnx"
    before = {v.version for v in client.search_model_versions(f"name = '{twin_name}'")}
    exported.run("export")
    after = {v.version for v in client.search_model_versions(f"name = '{twin_name}'")}
    assert after == before
    assert exported.report("export.json")["onnx"]["model_version"] == int(max(before, key=int))


def test_an_export_off_parity_is_refused_in_one_line_and_changes_nothing(
    exported: Exported, fluent_mlflow, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A converter that gets one weight wrong: both ONNX Runtime and OpenVINO then miss PyTorch's outputs."""
    real_to_onnx = stage.to_onnx

    def off_by_a_little(model, path: Path) -> None:
        real_to_onnx(model, path)
        graph = onnx.load(str(path))
        bias = next(t for t in reversed(graph.graph.initializer) if t.data_type == onnx.TensorProto.FLOAT)
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 0.5
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(graph, str(path))

    monkeypatch.setattr(stage, "to_onnx", off_by_a_little)
    monkeypatch.chdir(exported.root)
    models = exported.root / "models"
    files_before = {p.relative_to(models): sha256(p) for p in models.rglob("*") if p.is_file()}
    report_before = (exported.root / "reports" / "export.json").read_bytes()
    twin_name = f"{exported.params['registry']['model_name']}-onnx"
    versions_before = len(exported.client().search_model_versions(f"name = '{twin_name}'"))
    params = load_params(exported.root / "params.yaml")

    with pytest.raises(ParityFailed) as refused:
        stage.run_export(params, load_manifest(Path(params.data.manifest)), Reports(exported.root / "reports"))

    message = str(refused.value)
    assert "\n" not in message and "ONNX Runtime" in message and "OpenVINO" in message, message
    assert "nothing was written or registered" in message
    assert {p.relative_to(models): sha256(p) for p in models.rglob("*") if p.is_file()} == files_before
    assert (exported.root / "reports" / "export.json").read_bytes() == report_before
    assert len(exported.client().search_model_versions(f"name = '{twin_name}'")) == versions_before


# --- fashion-mlops predict -------------------------------------------------------------------------------------


def read_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text)))


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino"])
def test_predict_classifies_a_folder_of_pngs_as_evaluate_did(exported: Exported, tmp_path: Path, runtime: str) -> None:
    images = exported.test_images()[:20]
    for index, pixels in enumerate(images):
        Image.fromarray(pixels).save(tmp_path / f"image{index:03d}.png")
    out = tmp_path / "predictions.csv"

    result = exported.run("predict", str(tmp_path), "--runtime", runtime, "--out", str(out))

    rows = read_csv(out.read_text())
    classes = load_manifest(Path(exported.params["data"]["manifest"])).classes
    assert list(rows[0]) == ["file", "index", "label", *classes]
    assert [Path(row["file"]).name for row in rows] == [f"image{i:03d}.png" for i in range(20)]
    assert [row["label"] for row in rows] == exported.evaluate_predictions()[:20]
    for row in rows:
        probabilities = [float(row[name]) for name in classes]
        assert sum(probabilities) == pytest.approx(1, abs=1e-4)
        assert row["label"] == classes[int(np.argmax(probabilities))]
    assert "20 image(s) classified" in result.stderr


def test_predict_reads_an_idx_file_and_goes_on_past_an_unreadable_file(exported: Exported, tmp_path: Path) -> None:
    manifest = load_manifest(Path(exported.params["data"]["manifest"]))
    idx = exported.root / "data" / "raw" / manifest.file("test_images").name
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")

    result = exported.run("predict", str(broken), str(idx), "--runtime", "onnx", check=False)

    assert result.returncode == 1
    rows = read_csv(result.stdout)
    assert [row["label"] for row in rows] == exported.evaluate_predictions()
    assert [int(row["index"]) for row in rows] == list(range(len(rows)))
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped")]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(skipped) == 1 and str(broken) in skipped[0], result.stderr
    assert len(errors) == 1 and "1 file(s) could not be read" in errors[0], result.stderr


def test_predict_refuses_an_onnx_model_that_reads_other_files_in_one_line(exported: Exported, tmp_path: Path) -> None:
    model = onnx.load(str(exported.root / "models" / "champion.onnx"))
    weight = model.graph.initializer[0]
    weight.ClearField("raw_data")
    weight.data_location = onnx.TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/passwd")
    evil = tmp_path / "evil.onnx"
    onnx.save(model, str(evil))
    image = tmp_path / "one.png"
    Image.fromarray(exported.test_images()[0]).save(image)

    result = exported.run("predict", str(image), "--runtime", "onnx", "--model", str(evil), check=False)

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing to load" in errors[0] and "other files" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


@pytest.mark.parametrize("runtime", ["torch", "onnx", "openvino"])
def test_predict_without_a_champion_in_the_registry_says_so_in_one_line(
    exported: Exported, tmp_path: Path, runtime: str
) -> None:
    params = json.loads(json.dumps(exported.params))
    params["registry"]["model_name"] = "never-registered"
    other = write_params(tmp_path / "params.yaml", params)
    image = tmp_path / "one.png"
    Image.fromarray(exported.test_images()[0]).save(image)

    result = exported.run("--params", str(other), "predict", str(image), "--runtime", runtime, check=False)

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "never-registered" in errors[0], result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""


# --- mlflow models serve ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    url: str
    flavor: str

    def post(self, body: bytes, content_type: str = "application/json") -> tuple[int, Any]:
        headers = {"Content-Type": content_type}
        request = urllib.request.Request(f"{self.url}/invocations", data=body, headers=headers, method="POST")  # noqa: S310
        try:
            with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310 (loopback)
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode(errors="replace")

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Logits for uint8 images, sent as the model's float input in a plain JSON body."""
        status, reply = self.post(json.dumps({"inputs": (images[:, None] / 255.0).tolist()}).encode())
        assert status == 200, reply
        predictions = reply["predictions"]
        return np.array(predictions["logits"] if self.flavor == "onnx" else predictions)


@pytest.fixture(scope="module", params=["pt2", "onnx"])
def served(exported: Exported, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`mlflow models serve` of the champion (its pt2 version, or its ONNX twin) on a free loopback port."""
    name, alias = exported.params["registry"]["model_name"], exported.params["registry"]["alias"]
    model = f"models:/{name}@{alias}" if request.param == "pt2" else f"models:/{name}-onnx@{alias}"
    port, log_path = free_port(), tmp_path_factory.mktemp("serve") / "server.log"
    env = exported.env | {"MLFLOW_TRACKING_URI": exported.uri}  # the venv's bin/ is on PATH: serve runs its uvicorn
    command = ["mlflow", "models", "serve", "-m", model, "--env-manager", "local", "--host", "127.0.0.1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*command, "--port", str(port)],
            cwd=exported.root,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the uvicorn worker is stopped with it
        )
        try:
            wait_for_http(f"http://127.0.0.1:{port}/ping", process, log_path)
            yield Served(f"http://127.0.0.1:{port}", request.param)
        finally:
            stop_group(process)


def test_the_served_champion_answers_real_images_as_evaluate_predicted(exported: Exported, served: Served) -> None:
    classes = load_manifest(Path(exported.params["data"]["manifest"])).classes
    logits = served.predict(exported.test_images()[:25])
    assert logits.shape == (25, 10)
    assert [classes[i] for i in logits.argmax(1)] == exported.evaluate_predictions()[:25]


MALFORMED = {
    "wrong shape": json.dumps({"inputs": np.zeros((2, 28, 28)).tolist()}).encode(),
    "wrong width": json.dumps({"inputs": np.zeros((2, 1, 28, 27)).tolist()}).encode(),
    "strings": json.dumps({"inputs": [[["a"] * 28] * 28]}).encode(),
    "not JSON": b"this is not json",
    "no inputs": json.dumps({"images": [1, 2, 3]}).encode(),
}


@pytest.mark.parametrize("payload", list(MALFORMED))
def test_a_malformed_request_gets_a_4xx_with_a_message_and_the_server_serves_on(
    exported: Exported, served: Served, payload: str
) -> None:
    status, reply = served.post(MALFORMED[payload])

    assert 400 <= status < 500, (status, reply)
    assert json.loads(reply)["message"], reply
    assert "Traceback" not in reply  # the signature turns bad requests away before the model sees them
    images = exported.test_images()[:3]
    assert served.predict(images).shape == (3, 10)  # still up, still right


def test_generate_dockerfile_writes_a_dockerfile_that_serves_the_champion(exported: Exported, tmp_path: Path) -> None:
    name, alias = exported.params["registry"]["model_name"], exported.params["registry"]["alias"]
    env = exported.env | {"MLFLOW_TRACKING_URI": exported.uri}
    out = tmp_path / "docker"
    command = ["mlflow", "models", "generate-dockerfile", "-m", f"models:/{name}@{alias}", "-d", str(out)]
    result = subprocess.run(
        [*command, "--env-manager", "local"], cwd=exported.root, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    dockerfile = (out / "Dockerfile").read_text()
    assert "COPY model_dir /opt/ml/model" in dockerfile and "ENTRYPOINT" in dockerfile, dockerfile
    assert (out / "model_dir" / "MLmodel").is_file() and (out / "model_dir" / "data" / "model.pt2").is_file()
