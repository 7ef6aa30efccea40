# The README's two commands: `make demo` (set up + the main job) and `make test` (set up + tests).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-all
setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test:
	EDGEPRUNE_TEST_DEPS=1 bash scripts/setup.sh
	EDGEPRUNE_VENV=$(VENV) bash scripts/arm64-setup.sh --optional
	$(VENV)/bin/pytest -q

test-all:
	EDGEPRUNE_TEST_DEPS=1 bash scripts/setup.sh
	EDGEPRUNE_VENV=$(VENV) bash scripts/arm64-setup.sh --optional
	$(VENV)/bin/pytest -q -m "not tensorrt and not gpu"
