"""Exported model files are inspected before a runtime loads them: what `export` writes passes, anything else is
refused with one line naming the file."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fashion_mlops.errors import UserError
from fashion_mlops.inference import exported_files
from fashion_mlops.inference.exported_files import (
    UntrustedExport,
    check_onnx_file,
    check_onnx_model_dir,
    check_openvino_dir,
)

MODEL_URI = "models:/fashion-cnn-onnx@champion"
MLMODEL = """\
artifact_path: model
flavors:
  onnx:
    code: null
    data: model.onnx
    onnx_session_options: null
    onnx_version: 1.17.0
    providers:
    - CUDAExecutionProvider
    - CPUExecutionProvider
  python_function:
    data: model.onnx
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.onnx
    python_version: 3.11.7
mlflow_version: 2.19.0
model_size_bytes: 31520
model_uuid: 1412028614d1448cba61f5520e1ec092
utc_time_created: '2025-01-01 12:00:00.000000'
"""
MINIMAL_IR_XML = b'<?xml version="1.0"?>\n<net name="m" version="11"></net>\n'


def classifier() -> onnx.ModelProto:
    """What export writes, in small: images float [N, 1, 28, 28] -> Flatten -> Gemm -> logits [N, 10]."""
    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.normal(size=(784, 10)).astype(np.float32), "fc.weight")
    bias = numpy_helper.from_array(np.zeros(10, dtype=np.float32), "fc.bias")
    graph = helper.make_graph(
        [
            helper.make_node("Flatten", ["images"], ["flat"], name="flatten"),
            helper.make_node("Gemm", ["flat", "fc.weight", "fc.bias"], ["logits"], name="fc"),
        ],
        "simple_cnn",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], producer_name="pytorch")
    onnx.checker.check_model(model, full_check=True)
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.SerializeToString())
    return path


def external(tensor: TensorProto, location: str = "../../etc/passwd") -> TensorProto:
    """`tensor` changed to keep its data in the file at `location`."""
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in {"location": location, "offset": "0", "length": "40"}.items():
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    return tensor


def constant(name: str, output: str) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [output], value=helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0]))


def if_node(then_nodes: list[onnx.NodeProto], then_initializer: list[TensorProto] | None = None) -> onnx.NodeProto:
    """An If node on `condition` whose then_branch runs `then_nodes` (their output `then_out`)."""
    then_branch = helper.make_graph(
        then_nodes,
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
        initializer=then_initializer,
    )
    else_branch = helper.make_graph(
        [constant("else_value", "else_out")],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [1])],
    )
    return helper.make_node("If", ["condition"], ["branch_out"], then_branch=then_branch, else_branch=else_branch)


def with_if(model: onnx.ModelProto, node: onnx.NodeProto) -> onnx.ModelProto:
    """`model` with `node` (an If node on `condition`) and the condition added to its graph."""
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "condition"))
    model.graph.node.append(node)
    return model


def assert_one_line_naming(error: pytest.ExceptionInfo[UntrustedExport], culprit: str | Path) -> str:
    message = str(error.value)
    assert message.startswith(f"refusing to load {culprit}")
    assert len(message.splitlines()) == 1
    assert isinstance(error.value, UserError)
    return message


# check_onnx_file


def test_a_genuine_onnx_classifier_passes(tmp_path):
    check_onnx_file(save(classifier(), tmp_path / "model.onnx"))


def test_a_genuine_model_with_standard_subgraphs_and_constants_passes(tmp_path):
    model = with_if(classifier(), if_node([helper.make_node("Relu", [], ["then_out"], domain="ai.onnx")]))
    model.graph.node.append(constant("scale", "scale_out"))

    check_onnx_file(save(model, tmp_path / "model.onnx"))


def add_external_initializer(model: onnx.ModelProto) -> None:
    external(model.graph.initializer[0])


def add_external_constant(model: onnx.ModelProto) -> None:
    node = constant("stolen", "stolen_out")
    external(node.attribute[0].t)
    model.graph.node.append(node)


def add_external_constant_in_a_subgraph(model: onnx.ModelProto) -> None:
    node = constant("stolen", "then_out")
    external(node.attribute[0].t)
    with_if(model, if_node([node]))


def put_a_node_in_a_custom_domain(model: onnx.ModelProto) -> None:
    model.graph.node[1].domain = "com.evil"


def import_a_custom_domain(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("com.evil", 1))


def import_the_ml_domain(model: onnx.ModelProto) -> None:
    model.opset_import.append(helper.make_opsetid("ai.onnx.ml", 3))


def define_a_local_function(model: onnx.ModelProto) -> None:
    body = [helper.make_node("Identity", ["x"], ["y"])]
    model.functions.append(helper.make_function("local", "f", ["x"], ["y"], body, [helper.make_opsetid("", 20)]))


def put_a_custom_node_in_a_subgraph(model: onnx.ModelProto) -> None:
    with_if(model, if_node([helper.make_node("Relu", [], ["then_out"], domain="com.evil")]))


def put_a_custom_node_in_a_subgraph_of_a_subgraph(model: onnx.ModelProto) -> None:
    inner = if_node([helper.make_node("Relu", [], ["then_out"], domain="com.evil")])
    loop_body = helper.make_graph(
        [inner], "body", [], [helper.make_tensor_value_info("branch_out", TensorProto.FLOAT, None)]
    )
    loop = helper.make_node("Loop", ["", "condition"], ["then_out"], body=loop_body)
    with_if(model, if_node([loop]))


REFUSED_MODELS: dict[str, tuple[Callable[[onnx.ModelProto], None], str]] = {
    "external-initializer": (add_external_initializer, "tensors keep their data in other files ('fc.weight')"),
    "external-constant": (add_external_constant, "tensors keep their data in other files ('stolen')"),
    "external-constant-in-subgraph": (add_external_constant_in_a_subgraph, "other files ('stolen')"),
    "custom-domain-node": (put_a_node_in_a_custom_domain, "outside the ONNX standard ('com.evil')"),
    "custom-domain-opset": (import_a_custom_domain, "outside the ONNX standard ('com.evil')"),
    "ml-domain-opset": (import_the_ml_domain, "outside the ONNX standard ('ai.onnx.ml')"),
    "local-function": (define_a_local_function, "defines functions of its own"),
    "custom-node-in-subgraph": (put_a_custom_node_in_a_subgraph, "outside the ONNX standard ('com.evil')"),
    "custom-node-two-levels-down": (put_a_custom_node_in_a_subgraph_of_a_subgraph, "('com.evil')"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_MODELS))
def test_a_model_that_reaches_beyond_itself_is_refused_in_one_line_naming_the_file(tmp_path, case):
    change, expected = REFUSED_MODELS[case]
    model = classifier()
    change(model)
    path = save(model, tmp_path / "model.onnx")

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(path)

    assert expected in assert_one_line_naming(error, path)


def test_an_external_tensor_is_refused_even_where_onnx_would_not_find_its_file(tmp_path):
    model = classifier()
    external(model.graph.initializer[1], location="/nonexistent/weights.bin")
    path = save(model, tmp_path / "model.onnx")

    with pytest.raises(UntrustedExport, match=r"other files \('fc.bias'\)"):
        check_onnx_file(path)


def test_names_in_a_refusal_are_escaped_and_cut_to_three_so_the_message_stays_one_line(tmp_path):
    model = classifier()
    for index in range(5):
        name = f"w{index}\n\u00e9"  # a line break and a non-ASCII letter
        model.graph.initializer.append(external(numpy_helper.from_array(np.zeros(1, np.float32), name)))
    path = save(model, tmp_path / "model.onnx")

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(path)

    message = assert_one_line_naming(error, path)
    assert message.endswith("('w0\\n\\xe9', 'w1\\n\\xe9', 'w2\\n\\xe9' and 2 more)")
    assert message.isascii()


def test_an_external_initializer_inside_a_subgraph_is_refused(tmp_path):
    stolen = external(numpy_helper.from_array(np.zeros(10, np.float32), "stolen"))
    model = with_if(classifier(), if_node([helper.make_node("Identity", ["stolen"], ["then_out"])], [stolen]))
    path = save(model, tmp_path / "model.onnx")

    with pytest.raises(UntrustedExport, match="other files"):
        check_onnx_file(path)


def test_an_external_sparse_initializer_is_refused(tmp_path):
    model = classifier()
    values = external(numpy_helper.from_array(np.zeros(1, np.float32), "sparse"))
    indices = numpy_helper.from_array(np.zeros(1, np.int64), "sparse_indices")
    model.graph.sparse_initializer.append(helper.make_sparse_tensor(values, indices, [10]))
    path = save(model, tmp_path / "model.onnx")

    with pytest.raises(UntrustedExport, match="other files"):
        check_onnx_file(path)


@pytest.mark.parametrize(
    "data",
    [b"garbage bytes", b"\xff" * 64, b"PK\x03\x04" + bytes(60), MINIMAL_IR_XML],
    ids=["text", "ff", "zip", "openvino-xml"],
)
def test_a_file_that_is_not_an_onnx_model_is_refused(tmp_path, data):
    path = tmp_path / "model.onnx"
    path.write_bytes(data)

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(path)

    assert "not an ONNX model" in assert_one_line_naming(error, path)


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"")

    with pytest.raises(UntrustedExport):
        check_onnx_file(path)


def test_a_model_over_the_size_limit_is_refused_and_one_at_it_passes(tmp_path, monkeypatch):
    path = save(classifier(), tmp_path / "model.onnx")
    size = path.stat().st_size
    monkeypatch.setattr(exported_files, "MAX_MODEL_BYTES", size - 1)

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(path)
    assert f"{size} bytes, more than {size - 1}" in assert_one_line_naming(error, path)

    monkeypatch.setattr(exported_files, "MAX_MODEL_BYTES", size)
    check_onnx_file(path)


def test_a_symlink_to_a_genuine_model_is_refused(tmp_path):
    target = save(classifier(), tmp_path / "real" / "model.onnx")
    link = tmp_path / "model.onnx"
    link.symlink_to(target)

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(link)

    assert "not a regular file" in assert_one_line_naming(error, link)


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_a_path_that_is_no_file_is_refused(tmp_path, kind):
    path = tmp_path / "model.onnx"
    if kind == "directory":
        path.mkdir()

    with pytest.raises(UntrustedExport) as error:
        check_onnx_file(path)

    assert "not a regular file" in assert_one_line_naming(error, path)


# check_onnx_model_dir


def logged_model(directory: Path, mlmodel: str = MLMODEL, model: onnx.ModelProto | None = None) -> Path:
    """A directory laid out like mlflow.onnx.log_model(..., save_as_external_data=False) writes it."""
    directory.mkdir(parents=True)
    (directory / "MLmodel").write_text(mlmodel)
    save(model or classifier(), directory / "model.onnx")
    (directory / "requirements.txt").write_text("mlflow==2.19.0\nonnx==1.17.0\n")
    (directory / "conda.yaml").write_text("channels: [conda-forge]\ndependencies: [python=3.11.7]\nname: mlflow-env\n")
    (directory / "python_env.yaml").write_text("python: 3.11.7\nbuild_dependencies: [pip]\ndependencies: []\n")
    return directory


def test_a_logged_onnx_model_passes_and_gives_its_model_file(tmp_path):
    directory = logged_model(tmp_path / "model")

    assert check_onnx_model_dir(directory, MODEL_URI) == directory / "model.onnx"


def test_a_logged_onnx_model_with_every_file_mlflow_may_write_passes(tmp_path):
    directory = logged_model(tmp_path / "model")
    for name in ["input_example.json", "serving_input_example.json", "registered_model_meta"]:
        (directory / name).write_text("{}\n")

    assert check_onnx_model_dir(directory, MODEL_URI) == directory / "model.onnx"


def test_a_model_saved_by_mlflow_onnx_itself_passes(tmp_path):
    mlflow_onnx = pytest.importorskip("mlflow.onnx")
    directory = tmp_path / "model"
    mlflow_onnx.save_model(classifier(), str(directory), save_as_external_data=False)

    assert check_onnx_model_dir(directory, MODEL_URI) == directory / "model.onnx"


def replace_mlmodel(text: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / "MLmodel").write_text(text)

    return change


def write_file(name: str, data: bytes = b"import os\n") -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        (directory / name).write_bytes(data)

    return change


def link(name: str, target: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / name).unlink(missing_ok=True)
        (directory / name).symlink_to(target)

    return change


def remove(name: str) -> Callable[[Path], None]:
    def change(directory: Path) -> None:
        (directory / name).unlink()

    return change


REFUSED_DIRS: dict[str, tuple[Callable[[Path], None], str]] = {
    "code-in-pyfunc-flavor": (
        replace_mlmodel(MLMODEL.replace("    loader_module: mlflow.onnx\n", "    code: code\n    loader_module: x\n")),
        "names other files or code paths",
    ),
    "code-in-onnx-flavor": (replace_mlmodel(MLMODEL.replace("code: null", "code: code")), "code paths"),
    "data-elsewhere": (
        replace_mlmodel(MLMODEL.replace("    data: model.onnx\n", "    data: ../x.onnx\n", 1)),
        "other files",
    ),
    "pytorch-flavor": (
        replace_mlmodel(
            MLMODEL.replace("  python_function:\n", "  pytorch:\n    model_data: data\n  python_function:\n")
        ),
        "not an ONNX model",
    ),
    "no-onnx-flavor": (
        replace_mlmodel("flavors:\n  python_function:\n    loader_module: mlflow.onnx\n"),
        "not an ONNX",
    ),
    "no-flavors": (replace_mlmodel("artifact_path: model\n"), "not an ONNX model"),
    "flavors-a-list": (replace_mlmodel("flavors:\n- onnx\n"), "not an ONNX model"),
    "empty-mlmodel": (replace_mlmodel(""), "not an ONNX model"),
    "mlmodel-unclosed-yaml": (replace_mlmodel("flavors: {onnx: [unclosed\n"), "not an MLflow model description"),
    "mlmodel-a-list": (replace_mlmodel("- flavors\n- onnx\n"), "not an MLflow model description"),
    "mlmodel-a-string": (replace_mlmodel("just some text\n"), "not an MLflow model description"),
    "mlmodel-python-tag": (
        replace_mlmodel("flavors: !!python/object/apply:os.system ['true']\n"),
        "not an MLflow model description",
    ),
    "mlmodel-binary": (write_file("MLmodel", b"\xff\xfe\x00\x01\x80garbage"), "not an MLflow model description"),
    "mlmodel-missing": (remove("MLmodel"), "no MLmodel file of ours"),
    "mlmodel-a-directory": (lambda d: ((d / "MLmodel").unlink(), (d / "MLmodel").mkdir()), "no MLmodel file of ours"),
    "mlmodel-a-symlink": (link("MLmodel", "/etc/hostname"), "no MLmodel file of ours"),
    "extra-python-file": (write_file("evil.py"), "holds files a logged ONNX model does not ('evil.py')"),
    "extra-folder": (write_file("code/evil.py"), "('code', 'code/evil.py')"),
    "extra-empty-folder": (lambda d: (d / "artifacts").mkdir(), "('artifacts')"),
    "allowed-name-in-a-folder": (write_file("sub/model.onnx", b""), "('sub', 'sub/model.onnx')"),
    "folder-of-an-allowed-name": (lambda d: (d / "input_example.json").mkdir(), "('input_example.json')"),
    "symlink-requirements": (link("requirements.txt", "/etc/passwd"), "('requirements.txt')"),
    "symlink-model": (link("model.onnx", "/dev/zero"), "('model.onnx')"),
}


@pytest.mark.parametrize("case", sorted(REFUSED_DIRS))
def test_a_model_directory_that_is_not_what_mlflow_onnx_writes_is_refused_naming_the_model(tmp_path, case):
    change, expected = REFUSED_DIRS[case]
    directory = logged_model(tmp_path / "model")
    change(directory)

    with pytest.raises(UntrustedExport) as error:
        check_onnx_model_dir(directory, MODEL_URI)

    assert expected in assert_one_line_naming(error, MODEL_URI)


def test_a_model_directory_whose_mlmodel_is_over_the_limit_is_refused(tmp_path, monkeypatch):
    directory = logged_model(tmp_path / "model")
    monkeypatch.setattr(exported_files, "MAX_MLMODEL_BYTES", len(MLMODEL) - 1)

    with pytest.raises(UntrustedExport, match="no MLmodel file of ours"):
        check_onnx_model_dir(directory, MODEL_URI)

    monkeypatch.setattr(exported_files, "MAX_MLMODEL_BYTES", len(MLMODEL))
    check_onnx_model_dir(directory, MODEL_URI)


def test_a_model_directory_is_refused_when_its_onnx_file_is_missing(tmp_path):
    directory = logged_model(tmp_path / "model")
    (directory / "model.onnx").unlink()

    with pytest.raises(UntrustedExport) as error:
        check_onnx_model_dir(directory, MODEL_URI)

    assert_one_line_naming(error, directory / "model.onnx")


def test_a_model_directory_is_refused_when_its_onnx_file_reaches_beyond_itself(tmp_path):
    model = classifier()
    put_a_node_in_a_custom_domain(model)
    directory = logged_model(tmp_path / "model", model=model)

    with pytest.raises(UntrustedExport) as error:
        check_onnx_model_dir(directory, MODEL_URI)

    assert "('com.evil')" in assert_one_line_naming(error, directory / "model.onnx")


# check_openvino_dir


def ir(directory: Path, name: str = "model", xml: bytes = MINIMAL_IR_XML, weights: bytes = bytes(40)) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.xml").write_bytes(xml)
    (directory / f"{name}.bin").write_bytes(weights)
    return directory


def test_a_directory_with_one_ir_passes_and_gives_its_xml(tmp_path):
    directory = ir(tmp_path / "ir", name="fashion")

    assert check_openvino_dir(directory) == directory / "fashion.xml"


def test_an_ir_converted_by_openvino_from_the_onnx_model_passes(tmp_path):
    openvino = pytest.importorskip("openvino")
    directory = tmp_path / "ir"
    converted = openvino.convert_model(str(save(classifier(), tmp_path / "model.onnx")))
    openvino.save_model(converted, str(directory / "model.xml"), compress_to_fp16=False)
    assert sorted(path.name for path in directory.iterdir()) == ["model.bin", "model.xml"]

    assert check_openvino_dir(directory) == directory / "model.xml"


def add_second_ir(directory: Path) -> None:
    ir(directory, name="other")


def link_bin_elsewhere(directory: Path) -> None:
    target = ir(directory.parent / "elsewhere") / "model.bin"
    (directory / "model.bin").unlink()
    (directory / "model.bin").symlink_to(target)


def link_xml_elsewhere(directory: Path) -> None:
    target = ir(directory.parent / "elsewhere") / "model.xml"
    (directory / "model.xml").unlink()
    (directory / "model.xml").symlink_to(target)


def make_bin_a_directory(directory: Path) -> None:
    (directory / "model.bin").unlink()
    (directory / "model.bin").mkdir()


def rename_bin(directory: Path) -> None:
    (directory / "model.bin").rename(directory / "weights.bin")


REFUSED_IRS: dict[str, tuple[Callable[[Path], None], str]] = {
    "extra-file": (write_file("notes.txt", b"hi\n"), "one OpenVINO IR (NAME.xml + NAME.bin) only"),
    "extra-folder": (lambda d: (d / "cache").mkdir(), "one OpenVINO IR"),
    "extra-hidden-file": (write_file(".model.xml.swp", b"x"), "one OpenVINO IR"),
    "missing-bin": (remove("model.bin"), "one OpenVINO IR"),
    "missing-xml": (remove("model.xml"), "one OpenVINO IR"),
    "bin-of-another-name": (rename_bin, "one OpenVINO IR"),
    "two-irs": (add_second_ir, "one OpenVINO IR"),
    "bin-a-symlink": (link_bin_elsewhere, "model.bin is not a regular file"),
    "xml-a-symlink": (link_xml_elsewhere, "model.xml is not a regular file"),
    "bin-a-directory": (make_bin_a_directory, "model.bin is not a regular file"),
    "doctype": (
        write_file("model.xml", b'<?xml version="1.0"?>\n<!DOCTYPE net>\n<net name="m" version="11"></net>\n'),
        "declares a DTD or entities",
    ),
    "entities": (
        write_file(
            "model.xml",
            b'<?xml version="1.0"?>\n<!DOCTYPE net [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;">]>\n'
            b'<net name="&lol2;" version="11"></net>\n',
        ),
        "declares a DTD or entities",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSED_IRS))
def test_a_directory_that_is_not_exactly_one_ir_is_refused_in_one_line(tmp_path, case):
    change, expected = REFUSED_IRS[case]
    directory = ir(tmp_path / "ir")
    change(directory)

    with pytest.raises(UntrustedExport) as error:
        check_openvino_dir(directory)

    message = str(error.value)
    assert expected in message
    assert str(directory) in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize("kind", ["missing", "file"])
def test_a_path_that_is_not_a_directory_is_refused_as_an_ir(tmp_path, kind):
    path = tmp_path / "model.xml"
    if kind == "file":
        path.write_bytes(MINIMAL_IR_XML)

    with pytest.raises(UntrustedExport) as error:
        check_openvino_dir(path)

    assert_one_line_naming(error, path)


def test_an_ir_file_over_the_size_limit_is_refused(tmp_path, monkeypatch):
    directory = ir(tmp_path / "ir", weights=bytes(1000))
    monkeypatch.setattr(exported_files, "MAX_MODEL_BYTES", 999)

    with pytest.raises(UntrustedExport) as error:
        check_openvino_dir(directory)

    assert "1000 bytes, more than 999" in assert_one_line_naming(error, directory / "model.bin")


DOCTYPE = b'<!DOCTYPE net [<!ENTITY lol "lol">]>\n'


@pytest.mark.parametrize(
    "xml",
    [
        b'<?xml version="1.0"?>\n<!--' + b" " * (1 << 16) + b"-->\n" + DOCTYPE + b'<net name="m" version="11"></net>\n',
        ('<?xml version="1.0" encoding="UTF-16"?>\n' + DOCTYPE.decode() + '<net name="m" version="11"></net>\n').encode(
            "utf-16"
        ),
    ],
    ids=["after-64-KiB", "utf-16"],
)
def test_an_ir_declaring_a_dtd_is_refused_wherever_and_however_it_is_written(tmp_path, xml):
    directory = ir(tmp_path / "ir", xml=xml)

    with pytest.raises(UntrustedExport, match=r"declares a DTD or entities|is not UTF-8"):
        check_openvino_dir(directory)
