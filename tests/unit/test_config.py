"""params.yaml validation: every bad input is one `error:` line naming the key, exit code 2, and no side effects."""

from __future__ import annotations

import copy
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

from fashion_mlops.cli import USAGE_ERROR, main
from fashion_mlops.config import Params, TrainConfig, expand_grid, load_params
from fashion_mlops.errors import ConfigError
from helpers import REPO_ROOT

TUTORIAL_GRID = {"lr": [0.01, 0.001], "batch_size": [100, 1000], "shuffle": [True, False]}


def valid_params() -> dict[str, Any]:
    """A complete, valid params mapping whose every output path is relative, so it would land in the cwd."""
    return {
        "data": {
            "manifest": str(REPO_ROOT / "datasets" / "fashion-mnist.json"),
            "sources": ["no-such-dataset-dir", "http://127.0.0.1:9/never-contacted"],
            "dir": "data/raw",
            "val_size": 50,
            "subset": None,
        },
        "model": {"arch": "simple_cnn"},
        "train": {"epochs": 3, "seed": 42, "lr": 0.01, "batch_size": 100, "shuffle": True},
        "sweep": {"grid": copy.deepcopy(TUTORIAL_GRID), "workers": 1, "resume": True},
        "tracking": {
            "mlflow_uri": "sqlite:///mlflow.db",
            "artifact_location": "mlruns",
            "experiment": "test",
            "tensorboard_dir": "runs",
        },
        "registry": {"model_name": "test-cnn", "alias": "champion"},
        "evaluate": {"batch_size": 1000, "tta_flip": False},
    }


def with_value(dotted: str, value: Any) -> dict[str, Any]:
    """valid_params() with one key (dotted path, created if absent) set to `value`."""
    params = valid_params()
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    node[last] = value
    return params


def without(dotted: str) -> dict[str, Any]:
    params = valid_params()
    *parents, last = dotted.split(".")
    node = params
    for part in parents:
        node = node[part]
    del node[last]
    return params


def as_yaml(params: Any) -> str:
    return yaml.safe_dump(params, sort_keys=False)


# (case id, params file text or None for "no file", substrings the one error line must contain)
BAD_INPUTS: list[tuple[str, str | None, tuple[str, ...]]] = [
    ("epochs-is-a-word", as_yaml(with_value("train.epochs", "three")), ("train.epochs", "'three'")),
    ("epochs-is-a-float", as_yaml(with_value("train.epochs", 3.5)), ("train.epochs",)),
    ("epochs-is-a-bool", as_yaml(with_value("train.epochs", True)), ("train.epochs",)),
    ("epochs-zero", as_yaml(with_value("train.epochs", 0)), ("train.epochs",)),
    ("lr-is-a-word", as_yaml(with_value("train.lr", "fast")), ("train.lr", "'fast'")),
    ("lr-negative", as_yaml(with_value("train.lr", -0.01)), ("train.lr",)),
    ("lr-zero", as_yaml(with_value("train.lr", 0)), ("train.lr",)),
    ("shuffle-not-a-bool", as_yaml(with_value("train.shuffle", "maybe")), ("train.shuffle",)),
    ("unknown-optimizer", as_yaml(with_value("train.optimizer", "rmsprop")), ("train.optimizer",)),
    (
        "manifest-file-missing",
        as_yaml(with_value("data.manifest", "no/such/manifest.json")),
        ("data.manifest", "not found"),
    ),
    ("duplicate-yaml-key", "data:\n  val_size: 5\n  val_size: 6\n", ("val_size", "twice")),
    ("unknown-top-level-key", as_yaml(with_value("trian", {"epochs": 3})), ("trian", "unknown key")),
    ("unknown-key-in-train", as_yaml(with_value("train.epoch", 3)), ("train.epoch", "unknown key")),
    ("unknown-key-in-sweep", as_yaml(with_value("sweep.grids", {})), ("sweep.grids", "unknown key")),
    ("unknown-key-in-tracking", as_yaml(with_value("tracking.uri", "x")), ("tracking.uri", "unknown key")),
    ("section-not-a-mapping", as_yaml(with_value("train", 5)), ("train",)),
    ("data-section-missing", as_yaml(without("data")), ("data", "missing")),
    ("grid-not-a-mapping", as_yaml(with_value("sweep.grid", ["lr", 0.01])), ("sweep.grid",)),
    ("grid-values-not-a-list", as_yaml(with_value("sweep.grid", {"lr": 0.01})), ("sweep.grid.lr",)),
    ("grid-empty-list", as_yaml(with_value("sweep.grid", {"lr": []})), ("sweep.grid", "'lr'")),
    ("grid-unknown-key", as_yaml(with_value("sweep.grid", {"learning_rate": [0.1]})), ("sweep.grid", "learning_rate")),
    (
        "grid-value-wrong-type",
        as_yaml(with_value("sweep.grid", {"batch_size": [100, "big"]})),
        ("sweep.grid.batch_size[1]", "'big'"),
    ),
    ("grid-lr-negative", as_yaml(with_value("sweep.grid", {"lr": [0.01, -0.001]})), ("sweep.grid.lr[1]",)),
    ("grid-duplicated-value", as_yaml(with_value("sweep.grid", {"lr": [0.01, 0.01]})), ("sweep.grid", "'lr'")),
    (
        "grid-duplicated-value-spelled-differently",
        "sweep:\n  grid:\n    lr: [0.001, 1e-3]\n" + as_yaml(without("sweep")),
        ("sweep.grid", "'lr'"),
    ),
    (
        "grid-duplicated-value-int-and-float",
        as_yaml(with_value("sweep.grid", {"lr": [1, 1.0]})),
        ("sweep.grid", "'lr'"),
    ),
    ("unknown-arch", as_yaml(with_value("model.arch", "resnet9000")), ("model.arch", "resnet9000")),
    (
        "grid-unknown-arch",
        as_yaml(with_value("sweep.grid", {"arch": ["simple_cnn", "resnet9000"]})),
        ("sweep.grid.arch[1]", "resnet9000"),
    ),
    ("grid-arch-not-a-name", as_yaml(with_value("sweep.grid", {"arch": [7]})), ("sweep.grid.arch[0]",)),
    ("tracking-uri-ftp", as_yaml(with_value("tracking.mlflow_uri", "ftp://x")), ("tracking.mlflow_uri", "ftp")),
    (
        "tracking-uri-malformed-sqlite",
        as_yaml(with_value("tracking.mlflow_uri", "sqlite:/x.db")),
        ("tracking.mlflow_uri", "sqlite:/x.db"),
    ),
    ("alias-v-number", as_yaml(with_value("registry.alias", "v1")), ("registry.alias", "'v1'")),
    ("alias-reserved-latest", as_yaml(with_value("registry.alias", "Latest")), ("registry.alias", "'Latest'")),
    ("alias-with-space", as_yaml(with_value("registry.alias", "my champ")), ("registry.alias",)),
    ("val-size-zero", as_yaml(with_value("data.val_size", 0)), ("data.val_size",)),
    ("subset-one", as_yaml(with_value("data.subset", 1)), ("data.subset",)),
    ("sources-empty", as_yaml(with_value("data.sources", [])), ("data.sources",)),
    ("sources-s3", as_yaml(with_value("data.sources", ["s3://bucket/fashion"])), ("data.sources", "s3")),
    ("workers-zero", as_yaml(with_value("sweep.workers", 0)), ("sweep.workers",)),
    ("params-file-missing", None, ("params.yaml", "not found")),
    ("params-file-not-yaml", "train: [epochs: 3\nsweep: {\n", ("params.yaml", "YAML")),
    ("params-file-a-list", as_yaml([valid_params()]), ("params.yaml", "mapping")),
    ("params-file-empty", "", ("params.yaml", "mapping")),
]


def test_bad_input_table_is_big_and_distinct():
    assert len(BAD_INPUTS) >= 24
    assert len({case_id for case_id, _, _ in BAD_INPUTS}) == len(BAD_INPUTS)
    assert len({text for _, text, _ in BAD_INPUTS}) == len(BAD_INPUTS)


@pytest.fixture
def restore_sigterm():
    """cli.main installs a SIGTERM handler; give pytest its own back."""
    previous = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(text, expected, id=case_id) for case_id, text, expected in BAD_INPUTS]
)
def test_cli_rejects_bad_params_with_one_error_line_and_no_side_effects(
    tmp_path, monkeypatch, capsys, restore_sigterm, text, expected
):
    monkeypatch.chdir(tmp_path)
    params_path = tmp_path / "params.yaml"
    if text is not None:
        params_path.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())

    code = main(["--params", str(params_path), "sweep"])

    captured = capsys.readouterr()
    assert code == USAGE_ERROR == 2
    assert "Traceback" not in captured.err + captured.out
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error:")
    for fragment in expected:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "a rejected params file must create nothing"
    for made in ("data", "mlflow.db", "runs", "mlruns", "reports"):
        assert not (tmp_path / made).exists()


def test_load_params_raises_config_error_naming_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(with_value("train.lr", "fast")))
    with pytest.raises(ConfigError, match=r"train\.lr"):
        load_params(path)


def test_tutorial_grid_validates_and_expands_to_eight_cells_in_params_order(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(valid_params()))

    params = load_params(path)
    cells = params.cells()

    assert params.train.epochs == 3
    assert params.model.arch == "simple_cnn"
    assert len(cells) == 8
    assert [cell.swept for cell in cells] == expand_grid(TUTORIAL_GRID)
    assert [(c.train.lr, c.train.batch_size, c.train.shuffle) for c in cells] == [
        (0.01, 100, True),
        (0.01, 100, False),
        (0.01, 1000, True),
        (0.01, 1000, False),
        (0.001, 100, True),
        (0.001, 100, False),
        (0.001, 1000, True),
        (0.001, 1000, False),
    ]
    assert all(c.arch == "simple_cnn" and c.train.epochs == 3 for c in cells)


def test_cli_validate_reports_the_tutorial_grid_size(tmp_path, monkeypatch, capsys, restore_sigterm):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(valid_params()))

    assert main(["--params", str(path), "validate"]) == 0

    out = capsys.readouterr().out
    assert "valid; 8 run(s)" in out
    assert "simple_cnn" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]


def test_yaml_exponent_notation_parses_as_a_float(tmp_path):
    text = as_yaml(valid_params()).replace("lr: 0.01\n", "lr: 1e-3\n", 1)
    assert "lr: 1e-3" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)

    params = load_params(path)

    assert isinstance(params.train.lr, float)
    assert params.train.lr == pytest.approx(0.001)


def test_yaml_exponent_notation_in_the_grid_parses_as_floats(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(with_value("sweep.grid", {})).replace("grid: {}", "grid:\n    lr: [1e-2, 3E-4]"))

    params = load_params(path)

    assert params.sweep.grid == {"lr": [0.01, 0.0003]}
    assert [c.train.lr for c in params.cells()] == [0.01, 0.0003]


def test_repository_params_yaml_validates():
    params = load_params(REPO_ROOT / "params.yaml")

    assert isinstance(params, Params)
    assert len(params.cells()) >= 1
    assert params.data.sources


def test_omitted_sections_take_their_defaults(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml({"data": {"sources": ["somewhere"]}}))

    params = load_params(path)

    assert params.train == TrainConfig()
    assert params.model.arch == "simple_cnn"
    assert len(params.cells()) == 1  # an empty grid is one run


def test_params_are_frozen(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(valid_params()))
    params = load_params(path)
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError for frozen models
        params.train.lr = 1.0


def test_params_file_path_is_named_in_every_config_error(tmp_path: Path):
    path = tmp_path / "custom-name.yaml"
    path.write_text(as_yaml(with_value("sweep.workers", 0)))
    with pytest.raises(ConfigError, match=r"custom-name\.yaml"):
        load_params(path)
