# The two front-door commands: `make demo` (Saga on real HAPT data) and `make test`.
# Each creates or updates the virtual environment first, so both work on a fresh clone.
PY ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed-stamp
EXTRAS ?= saga,crnet-hf,l2m,phe,search-pg,tracking,bivldoc,dev

$(STAMP): pyproject.toml
	@test -x $(VENV)/bin/python || $(PY) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[$(EXTRAS)]'
	@touch $(STAMP)

.PHONY: setup demo test test-all lint
setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pretrainkit saga demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

test-all: $(STAMP)
	$(VENV)/bin/python -m pytest --runslow

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests
	$(VENV)/bin/ruff format --check src tests
