# The README's two commands: `make quickstart` and `make test`. Each builds .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: quickstart test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]'
	touch $(STAMP)

# Run notebooks/quickstart.ipynb headless on the embedded defaults (local backend, SQLite MLflow).
# On a machine with an NVIDIA GPU: make quickstart QUICKSTART_ARGS="-p gpus 1"
quickstart: $(STAMP)
	mkdir -p build
	$(BIN)/python -m papermill --log-output --kernel python3 $(QUICKSTART_ARGS) notebooks/quickstart.ipynb build/quickstart.ipynb

# ruff, mypy, the import contracts (lint-imports, [tool.importlinter] in pyproject.toml), the docs site (Sphinx, warnings as errors), then the whole pytest suite (real kernels, real MLflow,
# real subprocess jobs, a real Kubernetes cluster). `cluster prepare` builds the control plane, kubelet and
# kube-proxy from Debian's packages once per machine into ~/.cache/jupyter_mlflow_k8s (about 12 minutes the
# first time), installs the real node's Debian packages (as root) and builds the images from docker/ with
# buildah meanwhile (layers cached by buildah). Where no real node can run, pods run under the node agent;
# where no cluster can be built at all (exit 3) the Kubernetes tests skip with the reason.
# JMK_TEST_KUBECONFIG=... runs them against another cluster.
test: $(STAMP)
	$(BIN)/ruff check jupyter_mlflow_k8s tests benchmarks docs
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m sphinx -W --keep-going -b html docs build/docs
	tests/cluster/cluster prepare || [ $$? -eq 3 ]
	tests/ui/ensure_chromium.sh >/dev/null || [ $$? -eq 3 ]
	$(BIN)/python -m pytest -p no:cacheprovider -ra --durations=30 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/dispatch.py

clean:
	rm -rf $(VENV) build
