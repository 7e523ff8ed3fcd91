# A fresh clone needs only `make run` or `make test`: both create .venv, install and warm the
# Delta jar cache first (quick when already done).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.cv_pipeline_installed
export CV_PIPELINE_HOME ?= $(CURDIR)/.cv_pipeline

.PHONY: setup run test test-fast dev lock clean

$(STAMP): pyproject.toml .ci/requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip uv
	$(VENV)/bin/uv pip install --python $(PY) --quiet -r .ci/requirements.lock
	$(VENV)/bin/uv pip install --python $(PY) --quiet --no-deps -e .
	$(PY) -m cv_pipeline.data.spark warm
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(VENV)/bin/cv-pipeline run

test: setup
	$(PY) -m pytest cv_pipeline_tests -q -p no:cacheprovider --durations=15

test-fast: setup
	$(PY) -m pytest cv_pipeline_tests -q -p no:cacheprovider -m "not slow"

dev: setup
	$(VENV)/bin/cv-pipeline dev

lock:
	$(VENV)/bin/uv pip compile pyproject.toml --extra test --python-version 3.11 --no-header -o .ci/requirements.lock

clean:
	-$(VENV)/bin/python -c "from cv_pipeline.deployment.endpoints import EndpointServer; from cv_pipeline import settings; EndpointServer(settings.serving_dir()).stop()"
	rm -rf $(CV_PIPELINE_HOME)
