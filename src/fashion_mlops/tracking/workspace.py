"""Where relative tracking paths point: the working directory, or, inside a DVC experiment's temporary copy of the
repository, the same place in the repository it was copied from.

`dvc exp run --queue` (and `--temp`) runs the pipeline in `<repo>/.dvc/tmp/exps/[standalone/]tmpXXXXXXXX`, a copy
that DVC deletes once it has collected the experiment's git-tracked results. A SQLite store, an artifact directory
or TensorBoard logs written there would go with it. So relative `tracking.mlflow_uri` (SQLite),
`tracking.artifact_location` and `tracking.tensorboard_dir` are read against the original repository, and queued
experiments share the store, artifacts and logs of the workspace. DVC names that repository in `DVC_ROOT`, which is
trusted only where the copy's own path agrees; where the origin cannot be told, relative paths are refused.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fashion_mlops.config import Params
from fashion_mlops.errors import ConfigError

log = logging.getLogger(__name__)

SQLITE = "sqlite:///"
SERVER_FIX = "MLFLOW_TRACKING_URI=http://host:5000 dvc queue start"


@dataclass(frozen=True)
class TempCopy:
    """A temporary copy of the repository that DVC runs an experiment in, and deletes afterwards."""

    cwd: Path  # where the command runs, inside the copy
    repo: Path  # the repository the copy was made from, as far as can be told (for the suggested fix)
    origin: Path | None  # `cwd`'s counterpart in that repository; None when the copy's origin is uncertain
    why_uncertain: str = ""

    def anchor(self, path: str) -> str:
        """`path` as the command would read it in the original repository (an absolute path stays as it is)."""
        return os.path.normpath((self.origin or self.repo) / path)


def find_temp_copy(cwd: Path | None = None, env: Mapping[str, str] | None = None) -> TempCopy | None:
    """The DVC temporary copy that `cwd` lies in; None in an ordinary working tree.

    A copy is a repository (it holds `.dvc/`) below `<repo>/.dvc/tmp/`, and DVC sets `DVC_ROOT=<repo>` for the
    stages it runs there: both must agree. An experiment (`DVC_EXP_NAME` set) running outside `DVC_ROOT` is in a copy
    somewhere else (a DVC release that moved them), whose origin is uncertain too.
    """
    cwd = (cwd or Path.cwd()).resolve()
    env = os.environ if env is None else env
    dvc_root = Path(env["DVC_ROOT"]).resolve() if env.get("DVC_ROOT") else None
    for tmp in cwd.parents:
        if tmp.name != "tmp" or tmp.parent.name != ".dvc":
            continue
        repo = tmp.parent.parent
        roots = [d for d in (cwd, *cwd.parents) if d.is_relative_to(tmp) and d != tmp and (d / ".dvc").is_dir()]
        if not roots:
            return None  # DVC's own scratch space, not a copy of the repository
        if dvc_root != repo:
            why = "DVC_ROOT is unset" if dvc_root is None else f"DVC_ROOT is {dvc_root}"
            return TempCopy(cwd, repo, None, f"it lies in {repo}/.dvc/tmp but {why}")
        return TempCopy(cwd, repo, repo / cwd.relative_to(roots[0]))
    if env.get("DVC_EXP_NAME") and dvc_root is not None and not cwd.is_relative_to(dvc_root):
        return TempCopy(cwd, dvc_root, None, f"experiment {env['DVC_EXP_NAME']} runs outside DVC_ROOT={dvc_root}")
    return None


def relative_sqlite(uri: str) -> str | None:
    """The database path of a `sqlite:///relative/path` URI; None for any other URI."""
    if not uri.startswith(SQLITE):
        return None
    database = uri.removeprefix(SQLITE).split("?", 1)[0]
    return None if Path(database).is_absolute() else database


def anchored_uri(uri: str, key: str, copy: TempCopy | None = None) -> str:
    """`uri`, with a relative SQLite path read against the original repository inside a DVC temporary copy (looked
    up unless given). `key` names where the URI came from, for the error raised when the origin is uncertain."""
    database = relative_sqlite(uri)
    if database is None:
        return uri
    copy = copy or find_temp_copy()
    if copy is None:
        return uri
    if copy.origin is None:
        raise ConfigError(refusal(copy, {key: uri}))
    return SQLITE + copy.anchor(database) + uri.removeprefix(SQLITE + database)


def anchored_params(params: Params, cwd: Path | None = None, env: Mapping[str, str] | None = None) -> Params:
    """`params`, with relative tracking paths made absolute against the original repository when this runs in a
    DVC temporary copy. Raises ConfigError, before anything is written, when the copy's origin is uncertain."""
    env = os.environ if env is None else env
    copy = find_temp_copy(cwd, env)
    if copy is None:
        return params
    tracking = params.tracking
    if copy.origin is not None:
        update = {
            "mlflow_uri": anchored_uri(tracking.mlflow_uri, "tracking.mlflow_uri", copy),
            "artifact_location": copy.anchor(tracking.artifact_location),
            "tensorboard_dir": copy.anchor(tracking.tensorboard_dir),
        }
        log.info("in DVC's temporary copy %s, relative tracking paths point into %s", copy.cwd, copy.origin)
        return params.model_copy(update={"tracking": tracking.model_copy(update=update)})
    if not tracking.enabled:
        return params  # nothing is tracked, so nothing is lost
    env_uri = env.get("MLFLOW_TRACKING_URI")
    store_key, store = ("MLFLOW_TRACKING_URI", env_uri) if env_uri else ("tracking.mlflow_uri", tracking.mlflow_uri)
    relative = {store_key: store} if relative_sqlite(store) is not None else {}
    if store.startswith("sqlite:") and not Path(tracking.artifact_location).is_absolute():
        relative["tracking.artifact_location"] = tracking.artifact_location  # only a SQLite store puts them there
    if not Path(tracking.tensorboard_dir).is_absolute():
        relative["tracking.tensorboard_dir"] = tracking.tensorboard_dir
    if relative:
        raise ConfigError(refusal(copy, relative))
    return params


def refusal(copy: TempCopy, relative: Mapping[str, str]) -> str:
    """One line: which keys are relative, why their data would be lost here, and the absolute values that fix it."""
    named = " and ".join(f"{key} = {value!r}" for key, value in relative.items())
    absolute = {}
    for key, value in relative.items():
        database = relative_sqlite(value)
        absolute[key] = SQLITE + copy.anchor(database) if database is not None else copy.anchor(value)
    overrides = " ".join(f"-S {key}={value}" for key, value in absolute.items() if key.startswith("tracking."))
    fixes = [f"dvc exp run --queue {overrides}"] if overrides else []
    if "MLFLOW_TRACKING_URI" in absolute:
        fixes.append(f"MLFLOW_TRACKING_URI={absolute['MLFLOW_TRACKING_URI']} dvc queue start")
    store_too = "tracking.mlflow_uri" in relative or "MLFLOW_TRACKING_URI" in relative
    server = f" (or a server for the store: {SERVER_FIX})" if store_too else ""
    return (
        f"{named} {'is' if len(relative) == 1 else 'are'} relative, but this runs in a temporary copy of the "
        f"repository ({copy.cwd}) that DVC deletes afterwards and {copy.why_uncertain}, so what "
        f"{'it names' if len(relative) == 1 else 'they name'} would be lost with the copy; give absolute paths: "
        f"{'; '.join(fixes)}{server}"
    )
