# Two commands do all set-up on a fresh machine:
#   make run   - create .venv/, install the pinned stack + this package, run `dvc repro`
#                (make run PROFILE=places365: switch params.yaml to that profile first; see profiles/)
#   make test  - same set-up, then the test suite (slow end-to-end tests: make test-slow;
#                each profile's chain at its real shapes: make test-profiles; real servers and clusters:
#                make test-scale; .ci/run runs all three)
#   make deps  - after adding or removing an import: rewrite the code deps of dvc.yaml
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Prefect / MLflow / DVC settings: src/maskgit_inpaint/environment.py (one table, applied on import).

.PHONY: run test test-slow test-profiles test-scale bench deps ui clean

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	@echo "installing the pinned stack into $(VENV)/ (first time: ~2 min; log in $(VENV)/install.log)"
	@$(VENV)/bin/python -m pip install -q --upgrade pip > $(VENV)/install.log 2>&1
	@$(VENV)/bin/python -m pip install -q -e '.[test]' >> $(VENV)/install.log 2>&1 \
		|| { tail -n 30 $(VENV)/install.log; echo "pip install failed; full log: $(VENV)/install.log"; exit 1; }
	@touch $@

run: $(STAMP)
	$(if $(PROFILE),python -m maskgit_inpaint.profiles use $(PROFILE))
	dvc repro

test: $(STAMP)
	python -m pytest -m "not slow and not profile_run and not scale_out" -q --durations=10

test-slow: $(STAMP)
	python -m pytest -m slow -q

test-profiles: $(STAMP)
	python -m pytest -m profile_run -q --durations=0

test-scale: $(STAMP)
	python -m pytest -m scale_out -q --durations=0

bench: $(STAMP)
	@for b in bench/*.py; do echo "== $$b"; python $$b || exit 1; done

# Rewrite the code deps of dvc.yaml from each stage's import closure (tests/test_dag.py checks them).
deps: $(STAMP)
	python -m maskgit_inpaint.dag

ui: $(STAMP)
	python -m maskgit_inpaint mlflow ui --backend-store-uri sqlite:///mlflow.db --workers 1 --port 5000

clean:
	rm -rf data models results metrics checkpoints mlflow.db mlartifacts .prefect
