"""params.yaml -> validated, typed settings: the one place where defaults and limits live."""

from __future__ import annotations

import itertools
import math
import re
import reprlib
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal
from urllib.parse import urlparse

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer, MaxDepthExceededError
from ruamel.yaml.constructor import ConstructorError, SafeConstructor
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.reader import ReaderError

from fashion_mlops.errors import ConfigError

if TYPE_CHECKING:
    from fashion_mlops.data.manifest import Manifest

DEFAULT_PARAMS = Path("params.yaml")
GRID_KEYS_OUTSIDE_TRAIN = ("arch",)
MAX_GRID_CELLS = 1000  # one run per cell: a bigger grid is a slip of the keyboard, not a sweep to start
MAX_PARAMS_BYTES = 1 << 20  # a params file is a page of settings; a bigger one is not read, let alone parsed
MAX_YAML_DEPTH = 32  # params nest four levels deep; far deeper nesting would exhaust the parser's recursion
MAX_SEED = 2**32 - 1  # scikit-learn's random_state, which seeds the train/validation split, takes no more
MAX_WAIT_S = 86_400.0  # socket timeouts and timers overflow far beyond a day, and no download needs that long
SHOWN_VALUE_CHARS = 100  # of a bad value in an error line
MAX_ERROR_CHARS = 500
# registry.model_name goes into MLflow search filters (name = '...') and models:/name@alias URIs after the whole
# sweep, where a quote or a slash breaks them; tracking.experiment is held to the same rule
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
IDX_IMAGES_HEADER_BYTES = 16  # magic number and three dimensions, 4 bytes each
IMAGE_BYTES = 28 * 28
RAY_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9][A-Za-z0-9.-]{0,252}:\d{1,5}")


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("empty; give a path (relative to the working directory, or absolute)")
    return value


def _safe_name(value: str) -> str:
    if not SAFE_NAME.fullmatch(value):
        raise ValueError("not allowed; use only letters, digits, '.', '_' and '-', starting with a letter or digit")
    return value


NonBlankPath = Annotated[str, AfterValidator(_not_blank)]
SafeName = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_safe_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(_Strict):
    manifest: NonBlankPath = "datasets/fashion-mnist.json"
    sources: list[str] = Field(min_length=1)
    dir: NonBlankPath = "data/raw"
    val_size: int = Field(default=5000, ge=1)
    subset: int | None = Field(default=None, ge=2)
    timeout_s: float = Field(default=30.0, gt=0, le=MAX_WAIT_S)
    # the total time one file's download from one source may take (a slow trickle passes every timeout_s)
    deadline_s: float = Field(default=600.0, gt=0, le=MAX_WAIT_S)

    @field_validator("sources")
    @classmethod
    def _sources_are_dirs_or_urls(cls, sources: list[str]) -> list[str]:
        for source in sources:
            scheme = urlparse(source).scheme
            if scheme not in ("", "file", "http", "https"):
                raise ValueError(
                    f"source {_show(source)} has scheme {_show(scheme)}; "
                    "allowed: a local directory, file://, http:// or https://"
                )
            if not source.strip():
                raise ValueError("empty source; allowed: a local directory or an http(s) URL")
        return sources

    @model_validator(mode="after")
    def _subset_holds_the_validation_set(self) -> DataConfig:
        if self.subset is not None and self.subset <= self.val_size:
            raise ConfigError(
                f"data.subset = {self.subset}: must be more than data.val_size = {self.val_size}, "
                "since the validation images are held out of the subset"
            )
        return self


class ModelConfig(_Strict):
    arch: str = "simple_cnn"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str) -> str:
        return check_arch(arch)


def check_arch(arch: str) -> str:
    """`arch` if models.py builds it, else ValueError listing the names it does."""
    from fashion_mlops.models import check_arch as known  # late: models imports torch, which `--help` does not need

    return known(arch)


def check_device(device: str) -> str:
    """`device` if torch finds it on this machine ('auto' and 'cpu' always), else ValueError naming what is here."""
    if device in ("auto", "cpu"):
        return device
    import torch  # late, as in check_arch: `--help` does not need torch

    present = {"cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not present[device]:
        here = ["auto", "cpu", *(name for name, found in present.items() if found)]
        raise ValueError(f"torch finds no {device} device on this machine; allowed here: {', '.join(here)}")
    return device


class TrainConfig(_Strict):
    """Everything one training run needs; any of these may also be swept in `sweep.grid`."""

    epochs: int = Field(default=3, ge=1, le=1000)
    seed: int = Field(default=42, ge=0, le=MAX_SEED)
    lr: float = Field(default=0.01, gt=0, le=10)
    batch_size: int = Field(default=100, ge=1, le=65536)
    shuffle: bool = True
    optimizer: Literal["sgd", "adam", "adamw"] = "adam"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0, lt=1)
    label_smoothing: float = Field(default=0.0, ge=0, lt=1)
    schedule: Literal["constant", "onecycle"] = "constant"
    augment: Literal["none", "flip", "crop_flip"] = "none"
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    threads: int | None = Field(default=None, ge=1, le=256)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool = True
    compile: bool = False

    @field_validator("device")
    @classmethod
    def _device_present(cls, device: str) -> str:
        return check_device(device)


class SpaceRange(_Strict):
    """A range one parameter of a sampled search is drawn from: uniformly, or log-uniformly with `log: true`."""

    low: int | float
    high: int | float
    log: bool = False

    @model_validator(mode="after")
    def _a_range(self) -> SpaceRange:
        if not all(math.isfinite(bound) for bound in (self.low, self.high)):
            raise ValueError("low and high must be finite numbers")
        if self.low >= self.high:
            raise ValueError(f"low = {self.low} must be below high = {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low > 0 (low = {self.low}); drop log or raise low")
        return self

    @property
    def integer(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


class SweepConfig(_Strict):
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    # grid: every combination of `grid`; random or tpe (Optuna's TPE sampler): `trials` draws from `space`
    search: Literal["grid", "random", "tpe"] = "grid"
    trials: int = Field(default=20, ge=1, le=MAX_GRID_CELLS)
    # per parameter: a list to choose from, or a range {low, high, log}
    space: dict[str, Any] = Field(default_factory=dict)
    seed: int = Field(default=0, ge=0, le=MAX_SEED)  # the sampler's: the same seed draws the same trials
    # stop a sampled trial after an epoch when its validation accuracy is poor: none, median (Optuna's / Ray
    # Tune's median rule) or asha (asynchronous successive halving)
    prune: Literal["none", "median", "asha"] = "none"
    prune_warmup: int = Field(default=2, ge=0, le=1000)  # epochs every trial trains before it can be pruned
    # a sampled search starts no trial once this many seconds have passed since its first (None: `trials` alone)
    time_budget_s: float | None = Field(default=None, gt=0, le=MAX_WAIT_S * 30)
    workers: int = Field(default=1, ge=1, le=64)
    resume: bool = True
    # local: cells in this process or in `workers` local processes; ray: one Ray task per cell
    executor: Literal["local", "ray"] = "local"
    # with executor ray: null starts a Ray instance for the sweep; 'auto' or 'host:port' joins a running cluster
    ray_address: str | None = None

    @field_validator("ray_address")
    @classmethod
    def _ray_address_shape(cls, address: str | None) -> str | None:
        if address is None or address == "auto" or RAY_ADDRESS.fullmatch(address):
            return address
        raise ValueError(
            "not a Ray cluster address; allowed: null (start one for the sweep), 'auto' (the cluster this host "
            "joined with `ray start`), or host:port of its head (e.g. 10.0.0.5:6379)"
        )

    @field_validator("grid")
    @classmethod
    def _grid_shape(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            _check_choices("grid", key, values)
        cells = math.prod(len(values) for values in grid.values())  # counted, not expanded: the cap guards that
        if cells > MAX_GRID_CELLS:
            sizes = " x ".join(f"{len(values)} {key}" for key, values in grid.items())
            raise ConfigError(
                f"sweep.grid: {cells} runs ({sizes}) are more than the {MAX_GRID_CELLS} allowed; sweep fewer values"
            )
        return grid

    @field_validator("space")
    @classmethod
    def _space_shape(cls, space: dict[str, Any]) -> dict[str, list[Any] | SpaceRange]:
        return {key: _space_entry(key, values) for key, values in space.items()}

    @model_validator(mode="after")
    def _search_settings_agree(self) -> SweepConfig:
        if self.search == "grid":
            if self.space:
                raise ConfigError("sweep.space is drawn from by search random or tpe; with search grid use sweep.grid")
            if self.prune != "none":
                raise ConfigError(f"sweep.prune = {self.prune!r} needs sweep.search random or tpe; use prune none")
            if self.time_budget_s is not None:
                raise ConfigError("sweep.time_budget_s bounds a search random or tpe; a grid trains every cell (null)")
            return self
        if self.workers > 1 and self.executor == "local":
            raise ConfigError(
                f"sweep.workers = {self.workers}: a local search trains its trials one after another, each learning "
                "from the last; use workers 1 (or executor ray for trials side by side)"
            )
        if both := sorted(set(self.space) & set(self.grid)):
            raise ConfigError(f"sweep.space.{both[0]} is also in sweep.grid; give each parameter in one of them")
        if not self.space and not self.grid:
            raise ConfigError(f"sweep.search = {self.search!r} needs sweep.space: the parameters to draw trials from")
        return self

    def choices(self) -> dict[str, list[Any] | SpaceRange]:
        """What a sampled search draws from: `space`, and each key of `grid` as a list to choose from."""
        return {**self.grid, **self.space}


def numeric_kind(key: str) -> type | None:
    """int or float for a numeric training setting (which a range can be drawn for), else None."""
    field = TrainConfig.model_fields.get(key)
    if field is None:
        return None
    kinds = typing.get_args(field.annotation) or (field.annotation,)
    return next((kind for kind in kinds if kind in (int, float)), None)


def _space_entry(key: str, values: Any) -> list[Any] | SpaceRange:
    """One key of `sweep.space`: a list of choices, or a range, which one ValueError line refuses."""
    if isinstance(values, list):
        _check_choices("space", key, values)
        return values
    _check_swept_key("space", key)
    if not isinstance(values, dict):
        raise ValueError(f"space key {key!r} = {_show(values)}: give a list of values or a range {{low, high, log}}")
    try:
        return SpaceRange.model_validate(values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        if first["type"] == "extra_forbidden":
            raise ValueError(f"space key {key!r}: unknown key {where!r}; allowed: low, high, log") from None
        if first["type"] == "missing":
            raise ValueError(f"space key {key!r}: {where} is missing; a range needs low and high") from None
        detail = f"{where} = {_show(first.get('input'))}: " if where else ""
        raise ValueError(f"space key {key!r}: {detail}{_clean(first['msg'])}") from None


def _check_swept_key(section: str, key: str) -> None:
    allowed = sorted([*TrainConfig.model_fields, *GRID_KEYS_OUTSIDE_TRAIN])
    if key not in allowed:
        raise ValueError(f"unknown {section} key {_show(key)}; allowed: {', '.join(allowed)}")


def _check_choices(section: str, key: str, values: list[Any]) -> None:
    _check_swept_key(section, key)
    if not values:
        raise ValueError(f"{section} key {key!r} has no values; give a non-empty list")
    if len({_identity(v) for v in values}) != len(values):
        raise ValueError(f"{section} key {key!r} repeats a value: {_show(values)}")


class TrackingConfig(_Strict):
    mlflow_uri: str = "sqlite:///mlflow.db"
    artifact_location: NonBlankPath = "mlruns"
    experiment: SafeName = "fashion-mnist"
    tensorboard_dir: NonBlankPath = "runs"
    histogram_every: int = Field(default=1, ge=0)
    log_models: bool = True
    enabled: bool = True

    @field_validator("mlflow_uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme
        allowed = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")
        # a database URI may name its driver, as SQLAlchemy reads it: postgresql+psycopg2 is the one installed
        if scheme.split("+", 1)[0] not in allowed:
            raise ValueError(f"tracking URI {_show(uri)} has scheme {_show(scheme)}; allowed: {', '.join(allowed)}")
        database = uri.removeprefix("sqlite:///")
        if scheme == "sqlite" and (not uri.startswith("sqlite:///") or not database or database.endswith("/")):
            raise ValueError(f"SQLite URI {_show(uri)} must name a file: sqlite:///path/to/mlflow.db")
        return uri


class RegistryConfig(_Strict):
    model_name: SafeName = "fashion-mnist-cnn"
    alias: str = Field(default="champion", min_length=1, max_length=100)

    @field_validator("alias")
    @classmethod
    def _alias_shape(cls, alias: str) -> str:
        reserved = re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or reserved:
            raise ValueError(
                f"alias {_show(alias)} is not allowed; use letters, digits, '_' or '-', not 'latest' or 'v<number>'"
            )
        return alias


class EvaluateConfig(_Strict):
    batch_size: int = Field(default=1000, ge=1, le=65536)  # as train.batch_size
    tta_flip: bool = False


class ExportConfig(_Strict):
    """How the export stage times each runtime (test accuracy and parity always use the whole test set)."""

    latency_calls: int = Field(default=500, ge=1, le=100_000)  # timed batch-1 calls per runtime
    throughput_batches: int = Field(default=20, ge=1, le=1_000)  # timed batches of 256 per runtime


class Params(_Strict):
    """The whole of params.yaml."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _grid_values_are_valid(self) -> Params:
        for key, values in self.sweep.grid.items():
            for index, value in enumerate(values):
                self._check_value(f"sweep.grid.{key}[{index}]", key, value)
        for key, choice in self.sweep.space.items():
            if isinstance(choice, list):
                for index, value in enumerate(choice):
                    self._check_value(f"sweep.space.{key}[{index}]", key, value)
                continue
            kind = numeric_kind(key)
            if kind is None:
                raise ConfigError(f"sweep.space.{key}: a range needs a numeric parameter; give a list of values")
            if kind is int and not choice.integer:
                raise ConfigError(f"sweep.space.{key}: an integer parameter; give integer low and high")
            self._check_value(f"sweep.space.{key}.low", key, choice.low)
            self._check_value(f"sweep.space.{key}.high", key, choice.high)
        return self

    def _check_value(self, where: str, key: str, value: Any) -> None:
        """One swept value: an architecture models.py builds, or a training setting TrainConfig accepts."""
        if key == "arch":
            if not isinstance(value, str):
                raise ConfigError(f"{where} = {_show(value)}: expected an architecture name")
            _raise_as_config_error(where, value, lambda: check_arch(value))
        else:
            fields = self.train.model_dump() | {key: value}
            _raise_as_config_error(where, value, lambda: TrainConfig(**fields))

    def cells(self) -> list[Cell]:
        """Every combination of the grid, in params order; one run each. The one place the grid is expanded."""
        return [
            self.cell(index, cell_name(index, combo), combo) for index, combo in enumerate(expand_grid(self.sweep.grid))
        ]

    def trial(self, number: int, values: dict[str, Any]) -> Cell:
        """Trial `number` of a sampled search: the training settings with the drawn `values`."""
        return self.cell(number, trial_name(number, values), values)

    def cell(self, index: int, name: str, values: dict[str, Any]) -> Cell:
        return Cell(
            index=index,
            name=name,
            arch=str(values.get("arch", self.model.arch)),
            train=self.train.model_copy(update={k: v for k, v in values.items() if k != "arch"}),
            swept=values,
        )


class Cell(BaseModel):
    """One grid cell: its place and name in the sweep, the architecture, the full training settings, what was swept."""

    model_config = ConfigDict(frozen=True)
    index: int
    name: str
    arch: str
    train: TrainConfig
    swept: dict[str, Any]

    def flat_params(self) -> dict[str, Any]:
        """Every parameter of the run, swept and fixed, flat for logging."""
        return {"arch": self.arch, **self.train.model_dump()}


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of `grid`; keys vary slowest-first in the order given (an empty grid is one run)."""
    keys = list(grid)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]


def cell_name(index: int, combo: dict[str, Any]) -> str:
    """A readable, stable run name such as `run-03-lr=0.01-batch_size=100`."""
    return "-".join([f"run-{index:02d}", *(f"{key}={value}" for key, value in combo.items())])


def trial_name(number: int, values: dict[str, Any]) -> str:
    """A readable run name such as `trial-007-lr=0.00312-batch_size=64` (drawn numbers to 3 significant digits)."""
    shown = (f"{key}={value:.3g}" if isinstance(value, float) else f"{key}={value}" for key, value in values.items())
    return "-".join([f"trial-{number:03d}", *shown])


def _identity(value: Any) -> Any:
    """Grid values that compare equal as numbers (1 and 1.0) are the same value."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return ("number", float(value))
    return (type(value).__name__, repr(value))


def _raise_as_config_error(where: str, value: Any, check) -> None:
    try:
        check()
    except ValidationError as error:
        first = error.errors()[0]
        raise ConfigError(f"{where} = {_show(value)}: {_clean(first['msg'])}") from None
    except ValueError as error:
        raise ConfigError(f"{where} = {_show(value)}: {_clean(str(error))}") from None


class _NotAllowed(MarkedYAMLError):
    """Valid YAML that a params file may not use."""


class _NoAliasComposer(Composer):
    """Refuses anchors and aliases: a few hundred bytes of them expand to millions of values ('billion laughs')."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        if isinstance(event, AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _NotAllowed(
                None,
                None,
                "aliases are not allowed in params files (&anchor, *alias); write the value out",
                event.start_mark,
            )
        return super().compose_node(parent, index)


class _UniqueKeyConstructor(SafeConstructor):
    """DVC's reader refuses duplicate keys too; this one says so in a short line."""

    def check_mapping_key(self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any) -> bool:
        if key in mapping:
            raise ConstructorError(None, None, f"key {_show(key)} appears twice in one mapping", key_node.start_mark)
        return True


def _params_yaml() -> YAML:
    """The reader DVC uses for params files (YAML 1.2, `YAML(typ="safe")` in dvc.utils.serialize), minus aliases."""
    # pure: the C parser (ruamel.yaml.clib, not installed, so DVC does not use it either) would skip our composer
    yaml = YAML(typ="safe", pure=True)
    yaml.Composer = _NoAliasComposer
    yaml.Constructor = _UniqueKeyConstructor
    yaml.max_depth = MAX_YAML_DEPTH
    return yaml


def read_yaml(path: Path) -> Any:
    """Parse a YAML file to the same values DVC reads from it; errors are one line naming the file (and line)."""
    try:
        with path.open("rb") as file:
            data = file.read(MAX_PARAMS_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(_bounded(f"{path}: file not found; pass an existing params file")) from None
    except OSError as error:
        raise ConfigError(_bounded(f"{path}: cannot read ({error.strerror})")) from None
    if len(data) > MAX_PARAMS_BYTES:
        raise ConfigError(
            _bounded(f"{path}: bigger than {MAX_PARAMS_BYTES} bytes; a params file is a page of settings")
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(_bounded(f"{path}: not UTF-8 text (byte {error.start}); save it as UTF-8")) from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")  # the newlines DVC's text-mode read gives the parser
    try:
        return _params_yaml().load(text)
    except YAMLError as error:
        mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
        where = f" line {mark.line + 1}:" if mark else ""
        if isinstance(error, _NotAllowed):
            problem = error.problem
        elif isinstance(error, MaxDepthExceededError):
            problem = f"nested more than {MAX_YAML_DEPTH} levels deep"
        elif isinstance(error, ReaderError):
            problem = f"not valid YAML ({str(error).splitlines()[0]}, at character {error.position})"
        else:
            parts = (getattr(error, "context", None), getattr(error, "problem", None))
            problem = f"not valid YAML ({'; '.join(str(part) for part in parts if part) or error})"
        raise ConfigError(_bounded(f"{path}:{where} {problem}")) from None


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise ConfigError with one line naming the bad key."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(_bounded(f"{path}: expected a mapping of sections (data, train, sweep, ...)"))
    try:
        return Params.model_validate(raw)
    except ConfigError as error:
        raise ConfigError(_bounded(f"{path}: {error}")) from None
    except ValidationError as error:
        raise ConfigError(_bounded(f"{path}: {format_validation_error(error)}")) from None


def check_cluster_store(params: Params, uri: str) -> None:
    """Refuse a relative SQLite store for a sweep on a Ray cluster: each node writes its cells' runs to the store
    itself, and a relative path names a different file (or none) on every node."""
    sweep = params.sweep
    if sweep.executor != "ray" or sweep.ray_address is None or not params.tracking.enabled:
        return
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_absolute():
        raise ConfigError(
            _bounded(
                f"tracking.mlflow_uri = {_show(uri)}: a relative SQLite path cannot be shared by the nodes of the Ray "
                f"cluster at sweep.ray_address = {_show(sweep.ray_address)}; use an MLflow server "
                "(MLFLOW_TRACKING_URI=http://host:5000) or an absolute path that every node sees "
                "(sqlite:////shared/mlflow.db)"
            )
        )


def check_against_manifest(params: Params, manifest: Manifest) -> None:
    """Refuse a validation set as big as the dataset's training images, before anything is downloaded.

    Skipped when the manifest records no size for the training images. (data.subset > data.val_size is checked
    with the params.)
    """
    size = manifest.file("train_images").size
    if size is None:
        return
    images = max(0, (size - IDX_IMAGES_HEADER_BYTES) // IMAGE_BYTES)  # a 3-dim IDX file: N x 28 x 28 bytes
    if params.data.val_size >= images:
        raise ConfigError(
            _bounded(
                f"data.val_size = {params.data.val_size}: must be smaller than the {images} training images in "
                f"{manifest.name}, so that some are left to train on"
            )
        )


def format_validation_error(error: ValidationError) -> str:
    """One line: the dotted key, the bad value and what is allowed."""
    first = error.errors()[0]
    key = ".".join(_cut(str(part)) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        section = first["loc"][:-1]
        allowed = _allowed_keys(section)
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    return f"{key} = {_show(first.get('input'))}: {_clean(first['msg'])}"


def _allowed_keys(section: tuple) -> list[str]:
    model: type[BaseModel] = Params
    for part in section:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None) if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _clean(message: str) -> str:
    return message.removeprefix("Value error, ").replace("\n", " ")


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxdict, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxset = 2, 4, 6, 6, 6
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = SHOWN_VALUE_CHARS


def _show(value: Any) -> str:
    """repr(value) cut to a readable length, without first building the whole repr of a huge value."""
    return _cut(_SHORT.repr(value))


def _cut(text: str, limit: int = SHOWN_VALUE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _bounded(message: str) -> str:
    """One line of at most MAX_ERROR_CHARS, whatever the file's path or a value held."""
    return _cut(" ".join(message.splitlines()), MAX_ERROR_CHARS)
