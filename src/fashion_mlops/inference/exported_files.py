"""Exported model files are untrusted too: check an ONNX model or an OpenVINO IR before a runtime loads it.

Neither format carries code, but both can reach beyond themselves: an ONNX tensor may keep its data in an external
file named by a path (any file the process can read), a custom-domain operator asks the runtime for a library, and
either file can be made large enough to exhaust memory. What `export` writes has none of that, so anything else is
refused, with one line naming the file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from fashion_mlops.errors import UserError, quote_some
from fashion_mlops.tracking.model_files import ARTIFACT_FILES

MAX_MODEL_BYTES = 256 << 20
MAX_MLMODEL_BYTES = 1 << 20
MAX_XML_BYTES = 16 << 20  # an IR's XML describes layers only; the weights are in its .bin
ONNX_DOMAINS = frozenset({"", "ai.onnx"})
ONNX_FILE = "model.onnx"
# what mlflow.onnx.log_model writes with save_as_external_data=False: MLflow's own files and the model
ONNX_ARTIFACT_FILES = ARTIFACT_FILES | {ONNX_FILE}


class UntrustedExport(UserError):
    """An exported model's files are not what `fashion-mlops export` writes."""


def check_onnx_file(path: Path) -> None:
    """Raise UntrustedExport unless `path` is a self-contained ONNX model of standard operators only."""
    import onnx

    _check_size(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as error:  # protobuf's DecodeError and onnx's own errors share no base
        raise UntrustedExport(f"refusing to load {path}: not an ONNX model ({type(error).__name__})") from None
    if not (model.ir_version and model.graph.node and model.graph.input and model.graph.output):
        raise UntrustedExport(f"refusing to load {path}: it is no ONNX model (no graph, inputs or outputs)")
    if external := [t.name or "(unnamed)" for t in _tensors(model) if t.data_location == onnx.TensorProto.EXTERNAL]:
        raise UntrustedExport(
            f"refusing to load {path}: tensors keep their data in other files ({quote_some(external)})"
        )
    domains = {entry.domain for entry in model.opset_import} | {node.domain for node in _nodes(model)}
    if other := sorted(domains - ONNX_DOMAINS):
        raise UntrustedExport(
            f"refusing to load {path}: it uses operators outside the ONNX standard ({quote_some(other)})"
        )
    if model.functions:
        raise UntrustedExport(f"refusing to load {path}: it defines functions of its own, which export never writes")


def check_onnx_model_dir(model_dir: Path, model_uri: str) -> Path:
    """The ONNX file of a logged ONNX model, once the directory is exactly what mlflow.onnx.log_model writes."""
    mlmodel = model_dir / "MLmodel"
    if mlmodel.is_symlink() or not mlmodel.is_file() or mlmodel.stat().st_size > MAX_MLMODEL_BYTES:
        raise UntrustedExport(f"refusing to load {model_uri}: it has no MLmodel file of ours")
    try:
        flavors = (yaml.safe_load(mlmodel.read_bytes()) or {}).get("flavors")
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, AttributeError):
        raise UntrustedExport(f"refusing to load {model_uri}: its MLmodel is not an MLflow model description") from None
    onnx_flavor = flavors.get("onnx") if isinstance(flavors, dict) else None
    if not isinstance(onnx_flavor, dict) or set(flavors) - {"onnx", "python_function"}:
        raise UntrustedExport(f"refusing to load {model_uri}: it is not an ONNX model (flavors onnx, python_function)")
    if onnx_flavor.get("data") != ONNX_FILE or any(
        isinstance(conf, dict) and conf.get("code") for conf in flavors.values()
    ):
        raise UntrustedExport(f"refusing to load {model_uri}: its MLmodel names other files or code paths")
    found = []
    for path in sorted(model_dir.rglob("*")):
        name = path.relative_to(model_dir).as_posix()
        if path.is_symlink() or path.is_dir() or name not in ONNX_ARTIFACT_FILES:
            found.append(name)
    if found:
        raise UntrustedExport(
            f"refusing to load {model_uri}: it holds files a logged ONNX model does not ({quote_some(found)})"
        )
    check_onnx_file(model_dir / ONNX_FILE)
    return model_dir / ONNX_FILE


def check_openvino_dir(directory: Path) -> Path:
    """The IR's .xml file, once `directory` holds exactly one IR (an .xml and its .bin) and nothing else."""
    entries = sorted(directory.iterdir()) if directory.is_dir() else []
    xml = [p for p in entries if p.suffix == ".xml"]
    if len(xml) != 1 or sorted(p.name for p in entries) != sorted([xml[0].name, xml[0].with_suffix(".bin").name]):
        raise UntrustedExport(f"refusing to load {directory}: it must hold one OpenVINO IR (NAME.xml + NAME.bin) only")
    for path in entries:
        if path.is_symlink() or not path.is_file():
            raise UntrustedExport(f"refusing to load {directory}: {path.name} is not a regular file")
        _check_size(path)
    check_openvino_xml(xml[0])
    return xml[0]


def check_openvino_xml(xml: Path) -> None:
    """Refuse an IR whose XML declares a DTD or entities (the billion-laughs kind of file), anywhere in it. OpenVINO
    writes UTF-8; any other encoding (UTF-16, say) is refused, since it would hide a declaration from this check."""
    if xml.stat().st_size > MAX_XML_BYTES:
        raise UntrustedExport(f"refusing to load {xml}: its XML has more than {MAX_XML_BYTES} bytes")
    text = xml.read_bytes()
    try:
        text.decode("utf-8")
    except UnicodeDecodeError:
        raise UntrustedExport(f"refusing to load {xml}: its XML is not UTF-8") from None
    if b"\0" in text or b"<!DOCTYPE" in text or b"<!ENTITY" in text:
        raise UntrustedExport(f"refusing to load {xml}: its XML declares a DTD or entities")


def _check_size(path: Path) -> None:
    if path.is_symlink() or not path.is_file():
        raise UntrustedExport(f"refusing to load {path}: not a regular file")
    if path.stat().st_size > MAX_MODEL_BYTES:
        raise UntrustedExport(f"refusing to load {path}: {path.stat().st_size} bytes, more than {MAX_MODEL_BYTES}")


def _graphs(model):
    """The main graph and every subgraph (If, Loop, Scan bodies), however deep."""
    import onnx

    pending = [model.graph]
    while pending:
        graph = pending.pop()
        yield graph
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.type == onnx.AttributeProto.GRAPH:
                    pending.append(attribute.g)
                pending.extend(attribute.graphs)


def _nodes(model):
    for graph in _graphs(model):
        yield from graph.node


def _tensors(model):
    """Every tensor the model stores: initializers (dense and sparse) of every graph and constant attributes."""
    for graph in _graphs(model):
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attribute in node.attribute:
                yield attribute.t
                yield from attribute.tensors
                yield from (attribute.sparse_tensor.values, attribute.sparse_tensor.indices)
                for sparse in attribute.sparse_tensors:
                    yield from (sparse.values, sparse.indices)
