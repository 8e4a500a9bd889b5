# The single entry points. Each target bootstraps .venv on a fresh machine that has only
# python3, make and git; CI calls the same targets.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= aljex-sync.toml
# Test files run in this many processes at once (pytest-xdist); most tests wait on
# servers, sockets and disks, so two keep a 2-core machine busy. TEST_WORKERS=0: one.
TEST_WORKERS ?= 2

.PHONY: serve test lint bench crash-test demo format clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	@test -f $(CONFIG) || $(BIN)/aljex-sync -c $(CONFIG) init --database-url sqlite:///aljex.db \
		--then-serving $(if $(PUBLIC_HOST),--public-host $(PUBLIC_HOST))
	$(BIN)/aljex-sync -c $(CONFIG) serve

test: $(STAMP)
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format src tests bench
	$(BIN)/ruff check --fix src tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

# Not part of `make test`: a few minutes of SIGKILLs under load (docs/reliability.md).
# Options: make crash-test CRASH_ARGS="--backends sqlite --seeds 1,2 --kills 40"
crash-test: $(STAMP)
	$(BIN)/python -m bench.crash $(CRASH_ARGS)

demo: $(STAMP)
	$(BIN)/aljex-sync demo

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
