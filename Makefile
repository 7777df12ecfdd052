# Two commands do everything on a fresh machine: `make demo` and `make test`.
# Both create .venv on first use and reinstall only when pyproject.toml changed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo
PYTEST_ARGS ?=

.PHONY: demo test venv lint clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Two workers (pytest-xdist): the suite is dominated by process start-up, TensorFlow tracing and I/O,
# so two processes on two cores finish in about 60 % of the time of one. worksteal: an idle worker takes
# tests queued on the other, so the minute-long multi-process tests do not pile up on one worker at the end.
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist worksteal $(PYTEST_ARGS)

demo: $(STAMP)
	$(BIN)/kunet demo --workdir $(DEMO_DIR)

lint: $(STAMP)
	$(BIN)/ruff check kunet cli tests benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info
