"""params.yaml validation: every bad input is one `error:` line naming the key, exit code 2, and no side effects."""

from __future__ import annotations

import copy
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from fashion_mlops.cli import main
from fashion_mlops.config import (
    Params,
    TrainConfig,
    check_against_manifest,
    expand_grid,
    load_params,
    read_yaml,
)
from fashion_mlops.data.manifest import load_manifest
from fashion_mlops.errors import ConfigError
from helpers import REPO_ROOT

USAGE_ERROR = ConfigError.exit_code
# an error line a person can read: the CLI adds `error: ` to it
READABLE_LINE = 500

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


def with_data(**values: Any) -> dict[str, Any]:
    """valid_params() with several data.* keys set."""
    params = valid_params()
    params["data"].update(values)
    return params


def as_yaml(params: Any) -> str:
    return yaml.safe_dump(params, sort_keys=False)


def searched(**sweep: Any) -> dict[str, Any]:
    """valid_params() with a TPE search over a learning-rate range, and `sweep` keys on top."""
    params = valid_params()
    params["sweep"] = {"search": "tpe", "trials": 6, "space": {"lr": {"low": 1e-4, "high": 0.1, "log": True}}}
    params["sweep"].update(sweep)
    return params


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
    ("search-unknown", as_yaml(searched(search="bayes")), ("sweep.search", "'bayes'")),
    ("search-trials-zero", as_yaml(searched(trials=0)), ("sweep.trials", "greater than or equal to 1")),
    ("space-low-not-below-high", as_yaml(searched(space={"lr": {"low": 0.1, "high": 0.01}})), ("'lr'", "below")),
    ("space-low-equals-high", as_yaml(searched(space={"lr": {"low": 0.1, "high": 0.1}})), ("'lr'", "below")),
    (
        "space-log-with-zero-low",
        as_yaml(searched(space={"weight_decay": {"low": 0.0, "high": 0.1, "log": True}})),
        ("'weight_decay'", "log: true needs low > 0"),
    ),
    ("space-unknown-parameter", as_yaml(searched(space={"learning_rate": [0.1]})), ("sweep.space", "learning_rate")),
    ("space-range-missing-high", as_yaml(searched(space={"lr": {"low": 0.1}})), ("'lr'", "high is missing")),
    ("space-range-unknown-key", as_yaml(searched(space={"lr": {"low": 0.1, "high": 1, "q": 2}})), ("'q'", "low, high")),
    ("space-not-list-or-range", as_yaml(searched(space={"lr": 0.1})), ("'lr'", "list of values or a range")),
    ("space-range-bound-too-high", as_yaml(searched(space={"lr": {"low": 0.1, "high": 20}})), ("sweep.space.lr.high",)),
    (
        "space-range-of-a-word-parameter",
        as_yaml(searched(space={"optimizer": {"low": 1, "high": 2}})),
        ("sweep.space.optimizer", "give a list"),
    ),
    (
        "space-float-range-for-an-integer",
        as_yaml(searched(space={"batch_size": {"low": 16, "high": 64.5}})),
        ("sweep.space.batch_size", "integer"),
    ),
    ("space-bad-choice", as_yaml(searched(space={"optimizer": ["adam", "rmsprop"]})), ("sweep.space.optimizer[1]",)),
    ("space-empty-with-tpe", as_yaml(searched(space={}, grid={})), ("sweep.search", "sweep.space")),
    ("space-with-grid-search", as_yaml(searched(search="grid")), ("sweep.space", "random or tpe")),
    ("prune-with-grid-search", as_yaml(with_value("sweep.prune", "median")), ("sweep.prune", "random or tpe")),
    ("prune-unknown", as_yaml(searched(prune="hyperband")), ("sweep.prune", "'hyperband'")),
    (
        "parameter-in-grid-and-space",
        as_yaml(searched(grid={"lr": [0.1, 0.01]})),
        ("sweep.space.lr", "also in sweep.grid"),
    ),
    ("search-with-workers", as_yaml(searched(workers=2)), ("sweep.workers", "one after another")),
    ("time-budget-with-grid", as_yaml(with_value("sweep.time_budget_s", 60)), ("sweep.time_budget_s", "a grid")),
    ("time-budget-zero", as_yaml(searched(time_budget_s=0)), ("sweep.time_budget_s", "greater than 0")),
    ("params-file-missing", None, ("params.yaml", "not found")),
    ("params-file-not-yaml", "train: [epochs: 3\nsweep: {\n", ("params.yaml", "YAML")),
    ("params-file-a-list", as_yaml([valid_params()]), ("params.yaml", "mapping")),
    ("params-file-empty", "", ("params.yaml", "mapping")),
    (
        "yaml-anchor-and-alias",
        "sweep:\n  grid:\n    lr: &rates [0.1, 0.01]\n    batch_size: *rates\n" + as_yaml(without("sweep")),
        ("params.yaml", "line 3", "aliases", "not allowed"),
    ),
    (
        "yaml-alias-bomb",
        # 9**6 strings from a few hundred bytes; a mapping where a list belongs puts all of them in the error
        "data:\n  sources:\n    a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        + "".join(f"    {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcde", "bcdef", strict=True)),
        ("params.yaml", "line 3", "aliases", "not allowed"),
    ),
    ("yaml-nested-too-deep", "data:\n  sources: " + "[" * 5000 + "]" * 5000 + "\n", ("params.yaml", "deep")),
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
    assert len(lines) == 1, captured.err[:1000]
    assert len(lines[0]) <= len("error: ") + READABLE_LINE, lines[0][:1000]
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


def test_cli_validate_says_what_a_search_will_draw(tmp_path, monkeypatch, capsys, restore_sigterm):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(searched(prune="asha", grid={"arch": ["simple_cnn", "vgg_bn_small"]})))

    assert main(["--params", str(path), "validate"]) == 0

    out = capsys.readouterr().out
    assert "valid; a tpe search of 6 trial(s) over arch, lr, pruning: asha" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # no study yet, no store


def test_the_repository_params_take_a_search_from_dvc_set_param(tmp_path):
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_bytes((REPO_ROOT / "params.yaml").read_bytes())
    apply_overrides(
        str(path), ["sweep.search=tpe", "sweep.prune=median", "++sweep.space={lr: {low: 1e-4, high: 0.1, log: true}}"]
    )
    params = load_params(path)
    assert (params.sweep.search, params.sweep.prune) == ("tpe", "median")
    assert params.sweep.space["lr"].log and params.sweep.space["lr"].low == 1e-4


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


# Values that used to pass validation and then fail late (a traceback after the download, or after the whole sweep).
# (case id, params mapping, substrings the one-line ConfigError must contain)
FAIL_LATE_VALUES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("seed-beyond-sklearn", with_value("train.seed", 2**32), ("train.seed", "4294967296", "4294967295")),
    (
        "grid-seed-beyond-sklearn",
        with_value("sweep.grid", {"seed": [1, 2**32]}),
        ("sweep.grid.seed[1]", "4294967296", "4294967295"),
    ),
    ("model-name-with-quote", with_value("registry.model_name", "it's"), ("registry.model_name", "it's", "letters")),
    ("model-name-with-slash", with_value("registry.model_name", "a/b"), ("registry.model_name", "'a/b'", "letters")),
    ("model-name-leading-dash", with_value("registry.model_name", "-m"), ("registry.model_name", "'-m'")),
    ("experiment-with-quote", with_value("tracking.experiment", "it's"), ("tracking.experiment", "it's", "letters")),
    ("experiment-with-slash", with_value("tracking.experiment", "a/b"), ("tracking.experiment", "'a/b'")),
    ("data-dir-empty", with_value("data.dir", ""), ("data.dir", "''", "empty")),
    ("data-dir-blank", with_value("data.dir", "  "), ("data.dir", "empty")),
    ("manifest-empty", with_value("data.manifest", ""), ("data.manifest", "empty")),
    ("artifact-location-empty", with_value("tracking.artifact_location", ""), ("tracking.artifact_location", "empty")),
    ("tensorboard-dir-empty", with_value("tracking.tensorboard_dir", ""), ("tracking.tensorboard_dir", "empty")),
    ("sqlite-uri-without-path", with_value("tracking.mlflow_uri", "sqlite:///"), ("tracking.mlflow_uri", "sqlite:///")),
    ("evaluate-batch-huge", with_value("evaluate.batch_size", 10**9), ("evaluate.batch_size", "65536")),
    ("timeout-infinite", with_value("data.timeout_s", float("inf")), ("data.timeout_s", "inf")),
    ("timeout-beyond-a-day", with_value("data.timeout_s", 1e12), ("data.timeout_s", "86400")),
    ("deadline-zero", with_value("data.deadline_s", 0), ("data.deadline_s", "greater than 0")),
    ("deadline-negative", with_value("data.deadline_s", -1.0), ("data.deadline_s", "greater than 0")),
    ("deadline-a-word", with_value("data.deadline_s", "soon"), ("data.deadline_s", "'soon'")),
    ("deadline-infinite", with_value("data.deadline_s", float("inf")), ("data.deadline_s", "inf")),
    ("deadline-beyond-a-day", with_value("data.deadline_s", 1e12), ("data.deadline_s", "86400")),
    (
        "subset-3000-val-size-5000",
        with_data(subset=3000, val_size=5000),
        ("data.subset = 3000", "data.val_size = 5000"),
    ),
    ("subset-equal-to-val-size", with_data(subset=50, val_size=50), ("data.subset = 50", "data.val_size = 50")),
]


@pytest.mark.parametrize(
    ("params", "expected"), [pytest.param(params, expected, id=case) for case, params, expected in FAIL_LATE_VALUES]
)
def test_values_that_would_fail_late_are_refused_by_validation(tmp_path, params, expected):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(params))

    with pytest.raises(ConfigError) as raised:
        load_params(path)

    message = str(raised.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_safe_names_and_the_largest_seed_are_accepted(tmp_path):
    params = with_value("train.seed", 2**32 - 1)
    params["registry"]["model_name"] = "Fashion.cnn_v2-b"
    params["tracking"]["experiment"] = "9lives"
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(params))

    loaded = load_params(path)

    assert (loaded.train.seed, loaded.registry.model_name, loaded.tracking.experiment) == (
        2**32 - 1,
        "Fashion.cnn_v2-b",
        "9lives",
    )


def test_deadline_defaults_to_ten_minutes_and_reads_from_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(valid_params()))
    assert load_params(path).data.deadline_s == 600.0

    path.write_text(as_yaml(with_value("data.deadline_s", 120)))
    assert load_params(path).data.deadline_s == 120.0


# (case id, params file text: each puts something huge where a short value belongs, key named in the error)
HUGE_INPUTS: list[tuple[str, str, str]] = [
    ("long-value", as_yaml(with_value("train.epochs", "x" * 100_000)), "train.epochs"),
    ("long-unknown-key", as_yaml(with_value("train." + "k" * 100_000, 1)), "train.kkk"),
    ("long-grid", as_yaml(with_value("sweep.grid", {"lr": [0.5] * 50_000})), "sweep.grid"),
    ("long-source", as_yaml(with_value("data.sources", ["s3://" + "x" * 100_000])), "data.sources"),
    ("long-model-name", as_yaml(with_value("registry.model_name", "a/" * 50_000)), "registry.model_name"),
    ("long-duplicate-key", "data:\n  " + "k" * 1000 + ": 1\n  " + "k" * 1000 + ": 2\n", "twice"),  # YAML: <= 1024
    ("long-arch", as_yaml(with_value("model.arch", "n" * 100_000)), "model.arch"),
]


@pytest.mark.parametrize(("text", "key"), [pytest.param(text, key, id=case) for case, text, key in HUGE_INPUTS])
def test_error_lines_stay_readable_however_big_the_bad_value(tmp_path, text, key):
    path = tmp_path / "params.yaml"
    path.write_text(text)

    with pytest.raises(ConfigError) as raised:
        load_params(path)

    message = str(raised.value)
    assert "\n" not in message
    assert len(message) <= READABLE_LINE, message[:1000]
    assert key in message


def test_params_file_bigger_than_a_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(valid_params()) + "# padding\n" * 110_000)

    with pytest.raises(ConfigError, match=r"params\.yaml: .*1048576 bytes"):
        load_params(path)


def test_params_file_that_is_not_utf8_is_refused_in_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes(as_yaml(valid_params()).encode() + b"# caf\xe9\n")

    with pytest.raises(ConfigError, match=r"params\.yaml: .*UTF-8"):
        load_params(path)


def test_duplicate_key_error_names_the_key_and_its_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  sources: [x]\n  val_size: 5\n  val_size: 6\n")

    with pytest.raises(ConfigError, match=r"params\.yaml: line 4: .*'val_size' appears twice"):
        load_params(path)


# Scalars that YAML 1.1 (PyYAML) and YAML 1.2 (ruamel.yaml, which DVC uses) read differently, or that look alike.
TRICKY_SCALARS = [
    "010", "0o10", "0x10", "0b10", "0777", "08", "1_000", "1__0", "+1", "-0", "+0.5", ".5", "5.", "1.", "1e-3", "1E3",
    "1e3", "1.0e+3", "3E-4", "12e03", "-.5e-2", ".inf", "-.Inf", "+.INF", ".nan", ".NaN", "~", "null", "Null", "NULL",
    "", "yes", "no", "on", "off", "y", "n", "Y", "N", "Yes", "ON", "true", "True", "TRUE", "tRUE", "false", "1:30",
    "190:20:30", "2001-12-14", "2001-12-14t21:59:43.10-05:00", "0x1F", "0xfg", "1,000", "'010'", '"1e3"', "!!str 10",
    "!!int '7'", "!!float 1", "1.5_0", "._5", "0.1_", "-", "=", "<<", "1e", "e3", "0o", "0o8", "+.5", "--1",
]  # fmt: skip


def test_scalars_read_the_same_as_dvc_reads_them(tmp_path):
    from dvc.dependency.param import read_param_file
    from dvc.fs import LocalFileSystem

    path = tmp_path / "params.yaml"
    differences = []
    for text in TRICKY_SCALARS:
        path.write_text(f"value: {text}\nlisted: [{text}]\n")
        try:
            ours = {k: (type(v), repr(v)) for k, v in read_yaml(path).items()}
        except ConfigError:
            ours = "not valid YAML"
        try:
            dvc = {k: (type(v), repr(v)) for k, v in read_param_file(LocalFileSystem(), str(path)).items()}
        except Exception:  # whatever DVC raises, it refuses the text
            dvc = "not valid YAML"
        if ours != dvc:
            differences.append(f"{text!r}: ours {ours}, DVC {dvc}")

    assert not differences, "\n".join(differences)


def test_yaml_12_numbers_as_dvc_reads_them(tmp_path):
    path = tmp_path / "params.yaml"
    text = as_yaml(valid_params()).replace("epochs: 3\n", "epochs: 010\n").replace("shuffle: true\n", "shuffle: yes\n")
    path.write_text(text)

    with pytest.raises(ConfigError, match=r"train\.shuffle = 'yes'"):  # YAML 1.2: a string, not a boolean
        load_params(path)
    path.write_text(text.replace("shuffle: yes\n", "shuffle: true\n").replace("lr: 0.01\n", "lr: .5\n"))
    params = load_params(path)

    assert params.train.epochs == 10  # YAML 1.2: decimal, not octal 8
    assert params.train.lr == 0.5


def test_val_size_must_be_smaller_than_the_training_images_in_the_manifest(tmp_path, sample_dataset):
    manifest = load_manifest(sample_dataset / "manifest.json")  # 300 training images
    path = tmp_path / "params.yaml"

    path.write_text(as_yaml(with_value("data.val_size", 300)))
    with pytest.raises(ConfigError) as raised:
        check_against_manifest(load_params(path), manifest)
    assert "data.val_size = 300" in str(raised.value)
    assert "300 training images" in str(raised.value)

    path.write_text(as_yaml(with_value("data.val_size", 299)))
    check_against_manifest(load_params(path), manifest)


def test_a_subset_beyond_the_dataset_does_not_raise_the_limit_on_val_size(tmp_path, sample_dataset):
    manifest = load_manifest(sample_dataset / "manifest.json")  # 300 training images
    path = tmp_path / "params.yaml"
    params = valid_params()
    params["data"].update(subset=1000, val_size=300)
    path.write_text(as_yaml(params))

    with pytest.raises(ConfigError, match=r"data\.val_size = 300"):
        check_against_manifest(load_params(path), manifest)

    params["data"].update(subset=250, val_size=200)
    path.write_text(as_yaml(params))
    check_against_manifest(load_params(path), manifest)


def test_fashion_mnist_manifest_has_60000_training_images(tmp_path):
    manifest = load_manifest(REPO_ROOT / "datasets" / "fashion-mnist.json")
    path = tmp_path / "params.yaml"

    path.write_text(as_yaml(with_value("data.val_size", 60_000)))
    with pytest.raises(ConfigError, match=r"data\.val_size = 60000: .*60000 training images"):
        check_against_manifest(load_params(path), manifest)

    path.write_text(as_yaml(with_value("data.val_size", 59_999)))
    check_against_manifest(load_params(path), manifest)


def test_manifest_check_is_skipped_without_a_recorded_size(tmp_path):
    sizeless = SimpleNamespace(name="old", file=lambda role: SimpleNamespace(role=role, size=None))
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(with_value("data.val_size", 10**9)))

    check_against_manifest(load_params(path), sizeless)


@pytest.fixture
def no_accelerators(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["cuda", "mps"])
def test_a_device_this_machine_lacks_is_refused(tmp_path, no_accelerators, device):
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(with_value("train.device", device)))

    with pytest.raises(ConfigError, match=rf"train\.device = '{device}': .*allowed here: auto, cpu"):
        load_params(path)

    path.write_text(as_yaml(with_value("sweep.grid", {"device": ["cpu", device]})))
    with pytest.raises(ConfigError, match=rf"sweep\.grid\.device\[1\] = '{device}'"):
        load_params(path)


def test_a_device_this_machine_has_is_accepted(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    path = tmp_path / "params.yaml"
    path.write_text(as_yaml(with_value("sweep.grid", {"device": ["cpu", "cuda"]})))

    assert [c.train.device for c in load_params(path).cells()] == ["cpu", "cuda"]


def test_cli_help_imports_no_torch():
    code = (
        "import contextlib, sys; from fashion_mlops.cli import main\n"
        "with contextlib.suppress(SystemExit): main(['--help'])\n"
        "print('torch imported' if 'torch' in sys.modules else 'no torch', file=sys.stderr)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert "usage: fashion-mlops" in result.stdout
    assert result.stderr.strip() == "no torch"
