# anycore's entry points. `make run` and `make test` do all set-up themselves:
# they create .venv and install the project (with its test extras) when needed.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
EXTRAS := test,lint,bench,docs
SOURCES := $(shell find framework -name '*.py' -o -name 'py.typed') pyproject.toml README.md
PYTEST_ARGS ?=
# A full `make bench` rewrites docs/benchmarks.md (summary, charts, outputs);
# CI's smoke run passes BENCH_ARGS=--quick and writes nothing.
BENCH_ARGS ?= --write-docs

.PHONY: run test test-stress bench lint docs install clean fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Dependencies change only with pyproject.toml; the package itself is
# reinstalled (not editable: tests import the installed package) whenever a
# source file changes.
$(VENV)/.deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet hatchling ".[$(EXTRAS)]"
	touch $@

$(VENV)/.installed: $(VENV)/.deps $(SOURCES)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation --force-reinstall .
	touch $@

install: $(VENV)/.installed

run: install
	exec $(BIN)/anycore supervise examples/stack.toml

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The heavier reliability suite (load, hostile peers at scale); bounded.
test-stress: install
	$(BIN)/python -m pytest tests/stress -m stress $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

lint: install
	$(BIN)/ruff check framework tests examples benchmarks fuzz
	$(BIN)/ruff format --check framework tests examples benchmarks fuzz
	$(BIN)/mypy

# The site in site/: open site/index.html, or `python -m http.server -d site`
# for search too.  Nothing is fetched from the network, at build or view time.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Coverage-guided fuzzing (atheris) of what reads untrusted bytes: each harness
# of fuzz/ for FUZZ_TIME seconds (60 by default); the corpora grow in build/fuzz/
# and a crash leaves its input there as crash-<sha1> (re-run: python <harness> <file>).
fuzz: install
	@for harness in fuzz/fuzz_*.py; do \
		name=$$(basename $$harness .py); mkdir -p build/fuzz/$$name; \
		echo "== $$name"; \
		$(BIN)/python $$harness -max_total_time=$${FUZZ_TIME:-60} -timeout=10 \
			-rss_limit_mb=2048 -artifact_prefix=build/fuzz/ build/fuzz/$$name || exit 1; \
	done

clean:
	rm -rf $(VENV) build dist .mypy_cache .ruff_cache .hypothesis
