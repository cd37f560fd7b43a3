# Two commands do all set-up on a fresh machine:  `make run`  and  `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
export PATH := $(BIN):$(PATH)
UI_PORT ?= 5000
TENSORBOARD_PORT ?= 6006

.PHONY: install dataset sample run test lint repro-check bench ui tensorboard screenshots clean

$(STAMP): pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-compile --no-deps -e .
	@# pip byte-compiles on one core, compileall on all of them; like pip, it skips files written for a newer
	@# Python (torch's py312 test helpers), so their SyntaxError is not a failed install
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib || true
	touch $@

install: $(STAMP)  ## virtualenv with the pinned torch/torchvision/MLflow/DVC (requirements.lock)

dataset:  ## Debian's real Fashion-MNIST, the first of data.sources (skipped if present or impossible)
	@[ -d /usr/share/datasets/fashion-mnist ] || { command -v apt-get >/dev/null && \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; } \
	  || echo "note: could not install dataset-fashion-mnist; the download stage will try the mirrors"; }

sample: install  ## the small synthetic IDX dataset tracked by data.dvc
	@[ -d data/sample ] || fashion-mlops make-sample

run: install dataset sample  ## the main job: the whole DVC pipeline on params.yaml
	dvc repro

test: install sample  ## the test suite
	pytest -q

repro-check: install sample  ## run the pipeline twice from scratch on data/sample; fail on any metric difference
	python -m fashion_mlops.repro_check

bench: install dataset  ## the side-by-side benchmark against the tutorial's loop (needs the real data)
	dvc repro download && python benchmarks/bench_sweep.py --json reports/benchmark.json

ui: install  ## MLflow UI on http://127.0.0.1:5000 (loopback only)
	@echo "MLflow UI on http://127.0.0.1:$(UI_PORT): pick 'Model training' at the top of the sidebar to see the runs"
	MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false mlflow ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port $(UI_PORT) --workers 1

tensorboard: install  ## TensorBoard on http://127.0.0.1:6006 (loopback only)
	tensorboard --logdir runs --host 127.0.0.1 --port $(TENSORBOARD_PORT)

screenshots: install  ## README screenshots of the MLflow UI and TensorBoard (after `make run`; needs Debian's chromium)
	$(BIN)/python tools/screenshots.py --out docs/images

lint: install
	ruff check src tests benchmarks tools && ruff format --check src tests benchmarks tools

clean:
	rm -rf $(VENV) mlflow.db optuna.db mlruns runs data/raw models/champion.onnx models/openvino reports/*.json reports/*.csv reports/*.png
