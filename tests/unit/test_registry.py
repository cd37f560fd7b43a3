"""Promotion when other hosts share the tracking server but not the file lock: the alias holder is read again right
before the move and after it, so whatever another host does in between, the best version ends up holding the alias.

Each test runs against a real SQLite MLflow store. "Another host" is simulated at the two places where it can
interfere: while this host compares (inside the `score` callback, which promote_if_better calls between reading the
holder and moving the alias) and between the move and the read-back (by wrapping `registry.move_alias`, the one
write of a promotion).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from fashion_mlops.tracking import exports, registry, tags

ALIAS = "champion"
_names = itertools.count()


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One SQLite store for the module (creating one runs MLflow's migrations); each test uses a model of its own."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('registry') / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield uri
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])


class Model:
    """A registered model with a few versions, each with a known score."""

    def __init__(self, source: Path, scores: list[float]) -> None:
        self.name = f"model-{next(_names)}"
        self.client = mlflow.MlflowClient()
        self.client.create_registered_model(self.name)
        self.scores: dict[str, float] = {}
        self.versions = [self.add(source, score) for score in scores]

    def add(self, source: Path, score: float) -> ModelVersion:
        version = self.client.create_model_version(self.name, source.as_uri(), tags={"score": str(score)})
        self.scores[str(version.version)] = score
        return version

    def score(self, holder: registry.Champion) -> float:
        return self.scores[str(holder.version.version)]

    def another_host_moves_to(self, version: ModelVersion) -> None:
        self.client.set_registered_model_alias(self.name, ALIAS, str(version.version))

    def holder(self) -> str | None:
        champion = registry.current_champion(self.name, ALIAS)
        return str(champion.version.version) if champion else None

    def registered(self) -> list[int]:
        return sorted(int(v.version) for v in self.client.search_model_versions(f"name = '{self.name}'"))

    def promote(self, candidate: ModelVersion, score: Callable[[registry.Champion], float | None] | None = None):
        return registry.promote_if_better(
            self.name,
            ALIAS,
            candidate,
            self.scores[str(candidate.version)],
            score or self.score,
            registry.current_champion(self.name, ALIAS),
            settle_s=0,
        )


@pytest.fixture
def model(store: str, tmp_path: Path) -> Callable[..., Model]:
    (tmp_path / "model").mkdir()
    return lambda *scores: Model(tmp_path / "model", list(scores))


def version_of(promotion_holder: registry.Champion | None) -> str | None:
    return str(promotion_holder.version.version) if promotion_holder else None


# --- one host ---------------------------------------------------------------------------------------------------


def test_the_first_candidate_takes_the_alias(model) -> None:
    m = model(0.5)
    (candidate,) = m.versions

    promotion = m.promote(candidate)

    assert promotion.promoted and promotion.settled and promotion.rival is None
    assert version_of(promotion.holder) == m.holder() == "1"


def test_a_better_candidate_takes_the_alias_from_the_holder(model) -> None:
    m = model(0.5, 0.7)
    m.another_host_moves_to(m.versions[0])

    promotion = m.promote(m.versions[1])

    assert promotion.promoted and version_of(promotion.rival) == "1"
    assert m.holder() == "2"


@pytest.mark.parametrize("score", [0.7, 0.5], ids=["equal", "worse"])
def test_a_candidate_that_does_not_score_higher_leaves_the_alias(model, score: float) -> None:
    m = model(0.7, score)
    m.another_host_moves_to(m.versions[0])

    promotion = m.promote(m.versions[1])

    assert not promotion.promoted and promotion.settled
    assert version_of(promotion.holder) == m.holder() == "1"


def test_the_holder_itself_is_not_promoted_again(model) -> None:
    m = model(0.7)
    m.another_host_moves_to(m.versions[0])

    promotion = m.promote(m.versions[0])

    assert not promotion.promoted and m.holder() == "1"


def test_a_holder_that_cannot_be_measured_is_replaced(model) -> None:
    m = model(0.9, 0.1)
    m.another_host_moves_to(m.versions[0])

    promotion = m.promote(m.versions[1], score=lambda holder: None)

    assert promotion.promoted and m.holder() == "2"


# --- another host moves the alias while this one compares --------------------------------------------------------


def test_a_better_version_moved_in_while_comparing_keeps_the_alias(model) -> None:
    m = model(0.5, 0.9, 0.7)  # v1 holds it; another host promotes v2 while v3 is compared with v1
    old, better, candidate = m.versions
    m.another_host_moves_to(old)

    def score_while_another_host_promotes(holder: registry.Champion) -> float:
        if registry.is_version(holder, old.version):
            m.another_host_moves_to(better)
        return m.score(holder)

    promotion = m.promote(candidate, score=score_while_another_host_promotes)

    assert not promotion.promoted and promotion.settled
    assert version_of(promotion.rival) == version_of(promotion.holder) == m.holder() == "2"
    assert m.registered() == [1, 2, 3]


def test_a_worse_version_moved_in_while_comparing_is_replaced(model) -> None:
    m = model(0.5, 0.6, 0.7)
    old, worse, candidate = m.versions
    m.another_host_moves_to(old)
    compared: list[str] = []

    def score_while_another_host_promotes(holder: registry.Champion) -> float:
        compared.append(str(holder.version.version))
        if registry.is_version(holder, old.version):
            m.another_host_moves_to(worse)
        return m.score(holder)

    promotion = m.promote(candidate, score=score_while_another_host_promotes)

    assert compared == ["1", "2"]  # compared again with the version that moved in
    assert promotion.promoted and version_of(promotion.rival) == "2"
    assert version_of(promotion.holder) == m.holder() == "3"
    assert m.registered() == [1, 2, 3]


# --- another host moves the alias between this one's move and its read-back --------------------------------------


def move_then(monkeypatch: pytest.MonkeyPatch, m: Model, other: ModelVersion) -> list[str]:
    """registry.move_alias, followed once by another host's move to `other`; returns the versions moved to here."""
    real_move, moves = registry.move_alias, []

    def move_and_be_overwritten(name: str, alias: str, version: str) -> None:
        real_move(name, alias, version)
        moves.append(version)
        if len(moves) == 1:
            m.another_host_moves_to(other)

    monkeypatch.setattr(registry, "move_alias", move_and_be_overwritten)
    return moves


def test_a_better_version_moved_in_right_after_the_move_keeps_the_alias(model, monkeypatch) -> None:
    m = model(0.5, 0.9, 0.7)
    old, better, candidate = m.versions
    m.another_host_moves_to(old)
    moves = move_then(monkeypatch, m, better)

    promotion = m.promote(candidate)

    assert moves == ["3"]
    assert not promotion.promoted and promotion.settled
    assert version_of(promotion.holder) == m.holder() == "2"


def test_a_worse_version_moved_in_right_after_the_move_is_replaced(model, monkeypatch) -> None:
    m = model(0.5, 0.6, 0.7)
    old, worse, candidate = m.versions
    m.another_host_moves_to(old)
    moves = move_then(monkeypatch, m, worse)

    promotion = m.promote(candidate)

    assert moves == ["3", "3"]  # moved back after reading the worse version there
    assert promotion.promoted and version_of(promotion.rival) == "2"
    assert version_of(promotion.holder) == m.holder() == "3"
    assert m.registered() == [1, 2, 3]


def test_a_move_that_fails_because_another_host_wrote_the_alias_compares_with_what_it_wrote(model, monkeypatch) -> None:
    """Two first-ever writes of an alias can collide in the database; the loser's write fails."""
    m = model(0.5, 0.9, 0.7)
    old, better, candidate = m.versions
    m.another_host_moves_to(old)

    def collide(name: str, alias: str, version: str) -> None:
        m.another_host_moves_to(better)
        raise MlflowException("duplicate key value violates unique constraint")

    monkeypatch.setattr(registry, "move_alias", collide)

    promotion = m.promote(candidate)

    assert not promotion.promoted and m.holder() == "2"


def test_a_move_that_fails_with_the_holder_unchanged_raises(model, monkeypatch) -> None:
    m = model(0.5, 0.7)
    m.another_host_moves_to(m.versions[0])

    def refuse(name: str, alias: str, version: str) -> None:
        raise MlflowException("permission denied")

    monkeypatch.setattr(registry, "move_alias", refuse)

    with pytest.raises(MlflowException, match="permission denied"):
        m.promote(m.versions[1])
    assert m.holder() == "1"


def test_hosts_that_never_stop_moving_the_alias_end_the_promotion_with_one_note(model, capsys) -> None:
    m = model(*(0.1 + i / 100 for i in range(registry.PROMOTION_TRIES + 1)), 0.9)
    *others, candidate = m.versions
    m.another_host_moves_to(others[0])
    later, compared = iter(others[1:]), []

    def score_while_another_host_promotes(holder: registry.Champion) -> float:
        compared.append(holder)
        m.another_host_moves_to(next(later))
        return m.score(holder)

    promotion = m.promote(candidate, score=score_while_another_host_promotes)

    assert len(compared) == registry.PROMOTION_TRIES
    assert not promotion.promoted and not promotion.settled
    assert version_of(promotion.holder) == m.holder() == str(others[-1].version)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note:") and "did not settle" in lines[0], lines


# --- the ONNX twin's alias ----------------------------------------------------------------------------------------


def test_the_twin_takes_the_alias_while_its_source_holds_it(model) -> None:
    m = model(0.5)
    (source,) = m.versions
    m.another_host_moves_to(source)
    twin_name = exports.onnx_name(m.name)
    m.client.create_registered_model(twin_name)
    twin = m.client.create_model_version(twin_name, source.source)

    assert exports.share_alias(source, ALIAS, str(twin.version), settle_s=0)
    assert registry.holds_alias(twin_name, ALIAS, str(twin.version))


def test_a_twin_whose_source_no_longer_holds_the_alias_does_not_take_it(model) -> None:
    m = model(0.5, 0.9)
    source, newer = m.versions
    m.another_host_moves_to(newer)
    twin_name = exports.onnx_name(m.name)
    m.client.create_registered_model(twin_name)
    twin = m.client.create_model_version(twin_name, source.source)

    assert not exports.share_alias(source, ALIAS, str(twin.version), settle_s=0)
    assert registry.current_champion(twin_name, ALIAS) is None


def test_a_twin_whose_source_lost_the_alias_during_the_move_hands_it_to_the_new_holders_twin(
    model, monkeypatch
) -> None:
    m = model(0.5, 0.9)
    source, newer = m.versions
    m.another_host_moves_to(source)
    client, twin_name = m.client, exports.onnx_name(m.name)
    client.create_registered_model(twin_name)
    ours = client.create_model_version(twin_name, source.source)
    theirs = client.create_model_version(twin_name, source.source)
    client.set_model_version_tag(m.name, str(newer.version), tags.ONNX_VERSION, str(theirs.version))
    real_move, moves = registry.move_alias, []

    def move_while_another_host_promotes_and_exports(name: str, alias: str, version: str) -> None:
        moves.append(version)
        if len(moves) == 1:
            m.another_host_moves_to(newer)  # after this host read that its source holds the alias
            real_move(twin_name, alias, str(theirs.version))  # that host's export, landing before this one's move
        real_move(name, alias, version)

    monkeypatch.setattr(registry, "move_alias", move_while_another_host_promotes_and_exports)

    has_alias = exports.share_alias(source, ALIAS, str(ours.version), settle_s=0)

    assert not has_alias
    assert moves == [str(ours.version), str(theirs.version)]  # moved, read back, handed over
    assert registry.holds_alias(twin_name, ALIAS, str(theirs.version))
    assert m.holder() == "2"
