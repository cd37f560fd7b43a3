"""Grid expansion: every combination, in params order, with stable names; cells carry the full training settings."""

from __future__ import annotations

import pytest

from fashion_mlops import config
from fashion_mlops.config import MAX_GRID_CELLS, Params, TrainConfig, cell_name, expand_grid
from fashion_mlops.errors import ConfigError


def params_with(grid: dict, **train) -> Params:
    return Params.model_validate(
        {"data": {"sources": ["somewhere"]}, "model": {"arch": "simple_cnn"}, "train": train, "sweep": {"grid": grid}}
    )


def test_empty_grid_is_one_empty_combination():
    assert expand_grid({}) == [{}]


def test_grid_size_is_the_product_of_the_value_counts():
    grid = {"lr": [0.1, 0.01, 0.001], "batch_size": [16, 32], "shuffle": [True, False], "seed": [1, 2, 3, 4]}
    combos = expand_grid(grid)

    assert len(combos) == 3 * 2 * 2 * 4
    assert len({tuple(c.items()) for c in combos}) == len(combos)
    assert all(list(c) == list(grid) for c in combos)


def test_first_key_varies_slowest_and_last_key_fastest():
    combos = expand_grid({"lr": [0.1, 0.01], "batch_size": [10, 20, 30]})

    assert combos == [
        {"lr": 0.1, "batch_size": 10},
        {"lr": 0.1, "batch_size": 20},
        {"lr": 0.1, "batch_size": 30},
        {"lr": 0.01, "batch_size": 10},
        {"lr": 0.01, "batch_size": 20},
        {"lr": 0.01, "batch_size": 30},
    ]


def test_key_order_of_the_grid_decides_the_order_of_runs():
    forward = expand_grid({"a": [1, 2], "b": ["x", "y"]})
    backward = expand_grid({"b": ["x", "y"], "a": [1, 2]})

    assert [(c["a"], c["b"]) for c in forward] == [(1, "x"), (1, "y"), (2, "x"), (2, "y")]
    assert [(c["a"], c["b"]) for c in backward] == [(1, "x"), (2, "x"), (1, "y"), (2, "y")]


def test_single_key_grid_keeps_value_order():
    assert expand_grid({"lr": [0.3, 0.1, 0.2]}) == [{"lr": 0.3}, {"lr": 0.1}, {"lr": 0.2}]


def test_cell_name_is_readable_and_stable():
    combo = {"lr": 0.01, "batch_size": 100, "shuffle": True}

    assert cell_name(3, combo) == "run-03-lr=0.01-batch_size=100-shuffle=True"
    assert cell_name(3, dict(combo)) == cell_name(3, combo)
    assert cell_name(12, {}) == "run-12"


def test_cell_names_of_a_grid_are_unique():
    combos = expand_grid({"lr": [0.01, 0.001], "batch_size": [100, 1000], "shuffle": [True, False]})
    names = [cell_name(i, c) for i, c in enumerate(combos)]

    assert len(set(names)) == 8
    assert names[0] == "run-00-lr=0.01-batch_size=100-shuffle=True"
    assert names[7] == "run-07-lr=0.001-batch_size=1000-shuffle=False"


def test_cells_apply_swept_values_and_keep_fixed_ones():
    params = params_with({"lr": [0.1, 0.001], "batch_size": [64]}, epochs=2, seed=5, optimizer="sgd", momentum=0.5)

    cells = params.cells()

    assert [c.train.lr for c in cells] == [0.1, 0.001]
    assert [c.train.batch_size for c in cells] == [64, 64]
    for cell in cells:
        assert cell.arch == "simple_cnn"
        assert (cell.train.epochs, cell.train.seed, cell.train.optimizer, cell.train.momentum) == (2, 5, "sgd", 0.5)
        assert isinstance(cell.train, TrainConfig)
    assert [c.swept for c in cells] == [{"lr": 0.1, "batch_size": 64}, {"lr": 0.001, "batch_size": 64}]
    assert params.train.lr == 0.01  # the fixed settings themselves are untouched


def test_arch_in_grid_overrides_model_arch_and_is_not_a_train_setting():
    params = params_with({"arch": ["vgg_bn_small", "simple_cnn"], "lr": [0.01]})

    cells = params.cells()

    assert [c.arch for c in cells] == ["vgg_bn_small", "simple_cnn"]
    assert [c.swept for c in cells] == [{"arch": "vgg_bn_small", "lr": 0.01}, {"arch": "simple_cnn", "lr": 0.01}]
    assert all("arch" not in c.train.model_dump() for c in cells)


def test_flat_params_include_arch_and_every_training_setting():
    cell = params_with({"arch": ["vgg_bn_small"]}, lr=0.05).cells()[0]

    flat = cell.flat_params()

    assert flat["arch"] == "vgg_bn_small"
    assert flat["lr"] == 0.05
    assert set(flat) == {"arch", *TrainConfig.model_fields}


def test_empty_grid_gives_one_cell_with_the_fixed_settings():
    cells = params_with({}, lr=0.02).cells()

    assert len(cells) == 1
    assert cells[0].swept == {}
    assert cells[0].train.lr == 0.02
    assert cells[0].arch == "simple_cnn"


def test_a_grid_of_more_cells_than_the_cap_is_refused_without_expanding_it(monkeypatch):
    def expand_nothing(grid):
        raise AssertionError("validation must count the cells, not expand the grid")

    monkeypatch.setattr(config, "expand_grid", expand_nothing)
    values = [10**-k for k in range(1, 11)]
    grid = {"lr": values, "momentum": [v / 10 for v in values], "weight_decay": [v / 10 for v in values]}
    grid |= {"seed": list(range(10)), "batch_size": list(range(1, 11))}

    with pytest.raises(ConfigError) as raised:
        params_with(grid)

    assert str(raised.value) == (
        f"sweep.grid: 100000 runs (10 lr x 10 momentum x 10 weight_decay x 10 seed x 10 batch_size) are more than "
        f"the {MAX_GRID_CELLS} allowed; sweep fewer values"
    )


def test_a_grid_of_exactly_the_cap_is_valid():
    grid = {
        "seed": list(range(MAX_GRID_CELLS // 8)),
        "lr": [0.1, 0.01],
        "batch_size": [16, 32],
        "shuffle": [True, False],
    }

    assert MAX_GRID_CELLS == 1000
    assert len(params_with(grid).cells()) == MAX_GRID_CELLS
