"""The MLflow tags this project writes: how users' scripts, the UI and the tests find one run from another."""

from __future__ import annotations

KIND = "fashion_mlops.kind"  # "sweep" on a parent run, "cell" on each grid cell's child run
SWEEP = "fashion_mlops.sweep_run_id"  # a child run's parent, also as mlflow.parentRunId
FINGERPRINT = "fashion_mlops.fingerprint"  # what makes two runs' results equal: params, data, code (resume)
TENSORBOARD = "tensorboard.dir"  # the run's TensorBoard event directory
MODEL_URI = "fashion_mlops.model_uri"  # the run's logged model, set once it is exported
REUSED_FROM = "fashion_mlops.reused_from"  # the earlier identical run whose results a resumed cell took
FAILURE = "fashion_mlops.failure"  # why a run ended FAILED or KILLED
# on a sampled search's trial: "finished" or "pruned" (a pruned trial ends KILLED, its reason in FAILURE), and
# the Optuna trial number
TRIAL_STATE = "fashion_mlops.trial_state"
TRIAL = "fashion_mlops.trial"
HOST = "fashion_mlops.host"  # the host and process that own a RUNNING run, so a later sweep can tell
PID = "fashion_mlops.pid"  # a live run from one whose process died
PARENT = "mlflow.parentRunId"
# on a registry version: the test data it was measured on (the alias only moves between versions of equal digest)
TEST_DATA_DIGEST = "fashion_mlops.test_data_digest"
TEST_DATA_NAME = "fashion_mlops.test_data"
GIT_COMMIT = "mlflow.source.git.commit"  # the commit the code came from, and whether it had uncommitted changes
GIT_DIRTY = "git.dirty"
PARAMS_FILE = "dvc.params_file"  # the DVC params file, and the SHA-256 of its bytes
PARAMS_SHA256 = "dvc.params_sha256"
VERSION = "fashion_mlops.version"  # the package version, and a digest of the sweep's source files
CODE_VERSION = "fashion_mlops.code_version"
# the experiment's kind in MLflow 3; its 3.17 UI shows the view its sidebar toggle names instead (README)
EXPERIMENT_KIND = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"
# between a registry version and its ONNX twin (registered as `<model_name>-onnx`), so either finds the other
ONNX_VERSION = "fashion_mlops.onnx_version"  # on the source (pt2) version
SOURCE_VERSION = "fashion_mlops.source_version"  # on the ONNX version
ONNX_SHA256 = "fashion_mlops.onnx_sha256"  # on the ONNX version: the exported file it holds
OPENVINO_URI = "fashion_mlops.openvino_uri"  # on the ONNX version: the OpenVINO IR logged beside it
