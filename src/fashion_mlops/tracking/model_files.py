"""A logged model's files are untrusted: inspect them before anything in them is loaded, then load the model.

Loading a model can run code it carries in more ways than pickles: MLflow puts an MLmodel's `code` directory on
sys.path; torch.export.load dlopens AOTInductor shared objects, unpickles opaque constants with plain pickle, hands
symbolic shapes to sympy.sympify (which evaluates them) and compiles guard code into the module. So every file must
have the shape that `exporter.log_model` writes, checked entry by entry against allow-lists, before MLflow or torch
reads any of it; the pickle that shape does hold (the archive's sample inputs) is then unpickled weights-only.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from fashion_mlops.errors import UserError, quote_some

if TYPE_CHECKING:
    from torch import nn

FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"

ARCHIVE = "data/model.pt2"
# The files MLflow writes beside any logged model's own data (it leaves some out for some models, so none is
# required); exporter.log_model writes nothing else but the archive
ARTIFACT_FILES = frozenset(
    {
        "MLmodel",
        "conda.yaml",
        "python_env.yaml",
        "requirements.txt",
        "input_example.json",
        "serving_input_example.json",
        "registered_model_meta",
    }
)
ARTIFACT_DIRS = frozenset({"data"})
FLAVORS = frozenset({"pytorch", "python_function"})
MAX_MLMODEL_BYTES = 1 << 20
# Caps on the archive's central directory, checked before any entry is read: our largest architecture's archive
# has a few dozen entries and a few MiB, so these only stop archives that would exhaust memory or the disk.
MAX_ENTRIES = 1_000
MAX_ARCHIVE_BYTES = 512 << 20

# What torch.export.save writes for one plain exported program named "model", below the archive's root folder:
# no aotinductor/, extra/, executorch/ or mtia/ entries, no custom or opaque objects, no legacy pickled weights.
ARCHIVE_ENTRIES = tuple(
    re.compile(pattern)
    for pattern in (
        r"archive_format",
        r"archive_version",
        r"byteorder",
        r"\.data/version",
        r"\.data/serialization_id",
        r"models/model\.json",
        r"data/weights/model_weights_config\.json",
        r"data/weights/weight_\d+",
        r"data/constants/model_constants_config\.json",
        r"data/sample_inputs/model\.pt",
    )
)
PROGRAM = "models/model.json"
WEIGHTS_CONFIG = "data/weights/model_weights_config.json"
CONSTANTS_CONFIG = "data/constants/model_constants_config.json"
SAMPLE_INPUTS = "data/sample_inputs/model.pt"
WEIGHT_FILE = re.compile(r"weight_\d+")

# The sample inputs are a torch.save archive of a tuple of float tensors; its data.pkl is the one pickle a
# genuine model holds. These are the opcodes and globals torch.save writes for it (protocol 2).
SAMPLE_INPUT_ENTRIES = tuple(
    re.compile(pattern)
    for pattern in (
        r"data\.pkl",
        r"data/\d+",
        r"version",
        r"byteorder",
        r"\.format_version",
        r"\.storage_alignment",
        r"\.data/serialization_id",
    )
)
PICKLE_OPCODES = frozenset(
    {
        "PROTO",
        "STOP",
        "MARK",
        "GLOBAL",
        "REDUCE",
        "BINPERSID",
        "BINPUT",
        "LONG_BINPUT",
        "BINGET",
        "LONG_BINGET",
        "BININT",
        "BININT1",
        "BININT2",
        "BINUNICODE",
        "NONE",
        "NEWTRUE",
        "NEWFALSE",
        "EMPTY_TUPLE",
        "TUPLE",
        "TUPLE1",
        "TUPLE2",
        "TUPLE3",
        "EMPTY_DICT",
    }
)
PICKLE_GLOBALS = frozenset({"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"})

# Every operator our ARCHITECTURES export to (tests/e2e/test_model_files.py logs each one and checks it passes).
OPERATORS = frozenset(
    f"torch.ops.aten.{name}"
    for name in (
        "batch_norm.default",
        "conv2d.default",
        "dropout.default",
        "flatten.using_ints",
        "linear.default",
        "max_pool2d.default",
        "relu.default",
        "relu_.default",
    )
)
# torch.export's deserializer evaluates each symbolic expression with sympy.sympify; ours only name the batch size
BATCH_SYMBOL = re.compile(r"Symbol\('s\d+', positive=True, integer=True\)")


class UntrustedModel(UserError):
    """A logged model's files hold something that could run code when loaded, or are not what we log."""


class _Found(Exception):
    """What the inspection found; check_model_files turns it into UntrustedModel naming the model."""


@contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every torch.load inside the block is weights_only, even where a library asks otherwise.

    torch.export.load retries a failed restricted load of the archive's sample inputs with a full
    unpickle; forcing weights_only turns that retry into an error instead of code execution.
    """
    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def load_logged_model(model_uri: str) -> nn.Module:
    """The logged pt2 model at `model_uri`; UntrustedModel if its files are not what exporter.log_model writes."""
    import mlflow

    with tempfile.TemporaryDirectory(prefix="fashion-mlops-model-") as private:
        # a copy in a fresh private directory: the files loaded are the files inspected
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=private))
        check_model_files(local, model_uri)
        with weights_only_loading():
            return mlflow.pytorch.load_model(str(local))


def check_model_files(model_dir: Path, model_uri: str) -> None:
    """Raise UntrustedModel unless `model_dir` holds exactly the shape of a model exporter.log_model logged."""
    try:
        _check_mlmodel(model_dir / "MLmodel")
        _check_files(model_dir)
        _check_archive(model_dir / ARCHIVE)
    except _Found as found:
        raise UntrustedModel(f"refusing to load {model_uri}: {found}") from None


def _check_mlmodel(path: Path) -> None:
    if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MLMODEL_BYTES:
        raise _Found("it has no MLmodel file of ours")
    try:
        mlmodel = yaml.safe_load(path.read_bytes())
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError):
        raise _Found("its MLmodel is not YAML") from None
    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    if not isinstance(flavors, dict) or not all(isinstance(conf, dict) for conf in flavors.values()):
        raise _Found("its MLmodel has no flavors")
    # MLflow puts a flavor's code directory first on sys.path, so its modules shadow any imported later
    code = [f"flavors.{name}.code: {conf['code']}" for name, conf in flavors.items() if conf.get("code")]
    if code:
        raise _Found(f"its MLmodel declares code paths ({quote_some(code)})")
    if set(flavors) - FLAVORS or "pytorch" not in flavors:
        raise _Found(f"its MLmodel's flavors are {quote_some(flavors)}, not pytorch (and python_function)")
    if flavors["pytorch"].get("model_data") != "data":
        raise _Found("its pytorch flavor's model_data is not 'data'")
    if flavors.get("python_function", {}).get("loader_module", "mlflow.pytorch") != "mlflow.pytorch":
        raise _Found("its python_function flavor loads with another module than mlflow.pytorch")


def _check_files(model_dir: Path) -> None:
    archive = model_dir / ARCHIVE
    if archive.is_symlink() or not archive.is_file():
        raise _Found(f"it holds no pt2 archive ({ARCHIVE}): only models logged as pt2 load")
    unexpected = []
    for path in sorted(model_dir.rglob("*")):
        name = path.relative_to(model_dir).as_posix()
        if path.is_symlink():
            raise _Found(f"it holds a symbolic link ({quote_some([name])})")
        allowed = ARTIFACT_DIRS if path.is_dir() else ARTIFACT_FILES | {ARCHIVE}
        if name not in allowed:
            unexpected.append(name)
    if unexpected:
        raise _Found(f"it holds files a logged pt2 model does not ({quote_some(unexpected)})")


def _check_archive(path: Path) -> None:
    try:
        archive = zipfile.ZipFile(path)  # reads the central directory, nothing else
    except (zipfile.BadZipFile, OSError):
        raise _Found(f"{ARCHIVE} is not a zip archive") from None
    with archive:
        root = _check_entries(ARCHIVE, archive.infolist(), ARCHIVE_ENTRIES)
        names = set(archive.namelist())
        for required in (PROGRAM, WEIGHTS_CONFIG, CONSTANTS_CONFIG, SAMPLE_INPUTS):
            if f"{root}/{required}" not in names:
                raise _Found(f"{ARCHIVE} has no {required}")
        try:
            _check_weights(archive, root, names)
            constants = _json(archive, f"{root}/{CONSTANTS_CONFIG}")
            if constants != {"config": {}}:  # tensors or objects; ours have neither, and objects are plain-unpickled
                raise _Found(f"{ARCHIVE} declares constants, which our models have none of")
            _check_program(_json(archive, f"{root}/{PROGRAM}"))
            _check_sample_inputs(archive.read(f"{root}/{SAMPLE_INPUTS}"))
        except (zipfile.BadZipFile, EOFError):  # an entry's local header or CRC disagrees with the directory
            raise _Found(f"{ARCHIVE} is a malformed zip archive") from None


def _check_entries(where: str, infos: list[zipfile.ZipInfo], patterns: tuple[re.Pattern[str], ...]) -> str:
    """The one root folder all entries of a torch zip archive sit in, once every entry name is allowed."""
    if len(infos) > MAX_ENTRIES:
        raise _Found(f"{where} has {len(infos)} entries, more than {MAX_ENTRIES}")
    if sum(info.file_size for info in infos) > MAX_ARCHIVE_BYTES:
        raise _Found(f"{where} declares more than {MAX_ARCHIVE_BYTES} bytes")
    names = [info.filename for info in infos]
    if len(set(names)) < len(names):  # which copy a reader picks differs between readers
        raise _Found(f"{where} has duplicate entries")
    if unsafe := [name for name in names if _unsafe(name)]:
        raise _Found(f"{where} has unsafe entry paths ({quote_some(unsafe)})")
    if packed := [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1]:
        raise _Found(f"{where} has compressed or encrypted entries ({quote_some(packed)}), which torch never writes")
    roots = {name.partition("/")[0] for name in names}
    if len(roots) != 1:
        raise _Found(f"{where} has entries outside one root folder ({quote_some(roots)})")
    (root,) = roots
    unexpected = [name for name in names if not any(p.fullmatch(name.partition("/")[2]) for p in patterns)]
    if unexpected:
        raise _Found(f"{where} holds entries a plain exported program does not ({quote_some(unexpected)})")
    return root


def _unsafe(name: str) -> bool:
    parts = name.split("/")
    return name.startswith("/") or "\\" in name or "\0" in name or ":" in parts[0] or ".." in parts or "" in parts


def _check_weights(archive: zipfile.ZipFile, root: str, names: set[str]) -> None:
    """Every weight is read as raw tensor bytes from its own entry; a `use_pickle` weight is torch.load-ed."""
    config = _json(archive, f"{root}/{WEIGHTS_CONFIG}")
    weights = config.get("config") if isinstance(config, dict) else None
    if not isinstance(weights, dict):
        raise _Found(f"{ARCHIVE} has no weights config")
    for fqn, entry in weights.items():
        file = entry.get("path_name") if isinstance(entry, dict) else None
        raw = isinstance(file, str) and WEIGHT_FILE.fullmatch(file) and entry.get("use_pickle") is False
        if not raw or f"{root}/data/weights/{file}" not in names:
            raise _Found(f"{ARCHIVE} stores weight {fqn!r} other than as raw tensor bytes")


def _check_program(program: Any) -> None:
    if not isinstance(program, dict):
        raise _Found(f"{ARCHIVE}'s {PROGRAM} is not an exported program")
    if program.get("guards_code"):  # compiled into the loaded module and run on every call
        raise _Found(f"{ARCHIVE}'s {PROGRAM} carries guard code")
    for key, value in _leaves(program):
        if key == "expr_str" and not (isinstance(value, str) and BATCH_SYMBOL.fullmatch(value)):
            raise _Found(
                f"{ARCHIVE}'s {PROGRAM} has a symbolic expression other than a batch size ({quote_some([value])})"
            )
        if key == "target" and value not in OPERATORS:
            raise _Found(f"{ARCHIVE}'s {PROGRAM} calls {quote_some([value])}, which none of our architectures uses")


def _check_sample_inputs(data: bytes) -> None:
    where = f"{ARCHIVE}'s {SAMPLE_INPUTS}"
    try:
        inner = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise _Found(f"{where} is not a torch.save archive") from None
    with inner:
        root = _check_entries(where, inner.infolist(), SAMPLE_INPUT_ENTRIES)
        try:
            pickled = inner.read(f"{root}/data.pkl")
        except KeyError:
            raise _Found(f"{where} has no data.pkl") from None
    try:
        opcodes = list(pickletools.genops(pickled))  # parses the stream; runs nothing
    except Exception:  # genops raises whatever a malformed stream trips over
        raise _Found(f"{where} holds a malformed pickle") from None
    for opcode, argument, _ in opcodes:
        if opcode.name not in PICKLE_OPCODES:
            raise _Found(f"{where} holds pickle opcode {opcode.name}, which torch.save does not write for tensors")
        if opcode.name == "GLOBAL" and argument not in PICKLE_GLOBALS:
            raise _Found(f"{where} unpickles {quote_some([str(argument).replace(' ', '.')])}")


def _json(archive: zipfile.ZipFile, name: str) -> Any:
    try:
        return json.loads(archive.read(name))
    except (ValueError, RecursionError):
        raise _Found(f"{ARCHIVE}'s {name.partition('/')[2]} is not JSON") from None


def _leaves(value: Any) -> Iterator[tuple[Any, Any]]:
    """(key, value) of every non-container value in parsed JSON, depth first, without recursion."""
    stack: list[tuple[Any, Any]] = [(None, value)]
    while stack:
        key, value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.items())
        elif isinstance(value, list):
            stack.extend((key, item) for item in value)
        else:
            yield key, value
