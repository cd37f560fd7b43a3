"""params.yaml -> validated, typed settings: the one place where defaults and limits live."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fashion_mlops.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")
GRID_KEYS_OUTSIDE_TRAIN = ("arch",)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class DataConfig(_Strict):
    manifest: str = "datasets/fashion-mnist.json"
    sources: list[str] = Field(min_length=1)
    dir: str = "data/raw"
    val_size: int = Field(default=5000, ge=1)
    subset: int | None = Field(default=None, ge=2)
    timeout_s: float = Field(default=30.0, gt=0)

    @field_validator("sources")
    @classmethod
    def _sources_are_dirs_or_urls(cls, sources: list[str]) -> list[str]:
        for source in sources:
            scheme = urlparse(source).scheme
            if scheme not in ("", "file", "http", "https"):
                raise ValueError(
                    f"source {source!r} has scheme {scheme!r}; allowed: a local directory, file://, http:// or https://"
                )
            if not source.strip():
                raise ValueError("empty source; allowed: a local directory or an http(s) URL")
        return sources


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


class TrainConfig(_Strict):
    """Everything one training run needs; any of these may also be swept in `sweep.grid`."""

    epochs: int = Field(default=3, ge=1, le=1000)
    seed: int = Field(default=42, ge=0)
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


class SweepConfig(_Strict):
    grid: dict[str, list[Any]] = Field(default_factory=dict)
    workers: int = Field(default=1, ge=1, le=64)
    resume: bool = True

    @field_validator("grid")
    @classmethod
    def _grid_shape(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        allowed = sorted([*TrainConfig.model_fields, *GRID_KEYS_OUTSIDE_TRAIN])
        for key, values in grid.items():
            if key not in allowed:
                raise ValueError(f"unknown grid key {key!r}; allowed: {', '.join(allowed)}")
            if not values:
                raise ValueError(f"grid key {key!r} has no values; give a non-empty list")
            if len({_identity(v) for v in values}) != len(values):
                raise ValueError(f"grid key {key!r} repeats a value: {values}")
        return grid


class TrackingConfig(_Strict):
    mlflow_uri: str = "sqlite:///mlflow.db"
    artifact_location: str = "mlruns"
    experiment: str = Field(default="fashion-mnist", min_length=1)
    tensorboard_dir: str = "runs"
    histogram_every: int = Field(default=1, ge=0)
    log_models: bool = True
    enabled: bool = True

    @field_validator("mlflow_uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme
        allowed = ("sqlite", "http", "https", "postgresql", "mysql", "databricks")
        if scheme not in allowed:
            raise ValueError(f"tracking URI {uri!r} has scheme {scheme!r}; allowed: {', '.join(allowed)}")
        if scheme == "sqlite" and not uri.startswith("sqlite:///"):
            raise ValueError(f"SQLite URI {uri!r} must look like sqlite:///path/to/mlflow.db")
        return uri


class RegistryConfig(_Strict):
    model_name: str = Field(default="fashion-mnist-cnn", min_length=1, max_length=200)
    alias: str = Field(default="champion", min_length=1, max_length=100)

    @field_validator("alias")
    @classmethod
    def _alias_shape(cls, alias: str) -> str:
        reserved = re.fullmatch(r"[vV]\d+", alias) or alias.lower() == "latest"
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", alias) or reserved:
            raise ValueError(
                f"alias {alias!r} is not allowed; use letters, digits, '_' or '-', not 'latest' or 'v<number>'"
            )
        return alias


class EvaluateConfig(_Strict):
    batch_size: int = Field(default=1000, ge=1)
    tta_flip: bool = False


class Params(_Strict):
    """The whole of params.yaml."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    sweep: SweepConfig = SweepConfig()
    tracking: TrackingConfig = TrackingConfig()
    registry: RegistryConfig = RegistryConfig()
    evaluate: EvaluateConfig = EvaluateConfig()

    @model_validator(mode="after")
    def _grid_values_are_valid(self) -> Params:
        for key, values in self.sweep.grid.items():
            for index, value in enumerate(values):
                where = f"sweep.grid.{key}[{index}]"
                if key == "arch":
                    if not isinstance(value, str):
                        raise ConfigError(f"{where} = {value!r}: expected an architecture name")
                    _raise_as_config_error(where, value, lambda v=value: check_arch(v))
                else:
                    fields = self.train.model_dump() | {key: value}
                    _raise_as_config_error(where, value, lambda f=fields: TrainConfig(**f))
        return self

    def cells(self) -> list[Cell]:
        """Every combination of the grid, in params order; one run each. The one place the grid is expanded."""
        return [
            Cell(
                index=index,
                name=cell_name(index, combo),
                arch=str(combo.get("arch", self.model.arch)),
                train=self.train.model_copy(update={k: v for k, v in combo.items() if k != "arch"}),
                swept=combo,
            )
            for index, combo in enumerate(expand_grid(self.sweep.grid))
        ]


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
        raise ConfigError(f"{where} = {value!r}: {_clean(first['msg'])}") from None
    except ValueError as error:
        raise ConfigError(f"{where} = {value!r}: {_clean(str(error))}") from None


class _Yaml12Loader(yaml.SafeLoader):
    """YAML 1.2 floats: `1e-3` is a number (as DVC reads it), not the string PyYAML makes of it."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
    keys = [loader.construct_object(key_node) for key_node, _ in node.value]
    for key in keys:
        if keys.count(key) > 1:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice in one mapping", node.start_mark
            )
    return loader.construct_mapping(node)


_Yaml12Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(path: Path) -> Any:
    """Parse a YAML file the way DVC does for numbers; errors name the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found; pass an existing params file") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror})") from None
    try:
        return yaml.load(text, Loader=_Yaml12Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{where}: not valid YAML ({getattr(error, 'problem', error)})") from None


def load_params(path: Path = DEFAULT_PARAMS) -> Params:
    """Read and validate params.yaml; raise ConfigError with one line naming the bad key."""
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data, train, sweep, ...)")
    try:
        return Params.model_validate(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    except ValidationError as error:
        raise ConfigError(f"{path}: {format_validation_error(error)}") from None


def format_validation_error(error: ValidationError) -> str:
    """One line: the dotted key, the bad value and what is allowed."""
    first = error.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
    kind = first["type"]
    if kind == "extra_forbidden":
        section = first["loc"][:-1]
        allowed = _allowed_keys(section)
        return f"{key}: unknown key; allowed: {', '.join(allowed)}"
    if kind == "missing":
        return f"{key}: required key is missing"
    value = first.get("input")
    return f"{key} = {value!r}: {_clean(first['msg'])}"


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
