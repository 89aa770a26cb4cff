# relaymeter: `make run` starts it on http://127.0.0.1:8320 (SQLite), `make test` runs every check.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UI_STAMP := relaymeter/web/dist/index.html
HOST ?= 127.0.0.1
PORT ?= 8320

.PHONY: run test lint typecheck pytest ui ui-test browser-deps bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The console is built from frontend/ when npm is available; a wheel ships the built files.
ui: $(UI_STAMP)
$(UI_STAMP): $(shell find frontend -type f -not -path '*/node_modules/*' 2>/dev/null) | $(STAMP)
	@if [ -f frontend/package.json ] && command -v npm >/dev/null 2>&1; then \
		cd frontend && (npm ci --no-audit --no-fund || npm install --no-audit --no-fund) && npm run build; \
	else \
		echo "warning: npm not found: the console is not built (serve shows how to build it)"; \
	fi

run: $(STAMP) ui
	$(BIN)/relaymeter serve --host $(HOST) --port $(PORT)

lint: $(STAMP)
	$(BIN)/ruff check relaymeter tests bench
	$(BIN)/ruff format --check relaymeter tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

ui-test: ui
	@if [ -f frontend/package.json ] && command -v npm >/dev/null 2>&1; then cd frontend && npm test; fi

# Debian's chromium for the Playwright browser tests (no browser downloads by test tools).
browser-deps:
	@command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium || { \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
		|| echo "warning: could not install chromium; browser tests will skip (fail under CI=true)"; }

pytest: $(STAMP) ui browser-deps
	$(BIN)/pytest -q -p no:cacheprovider

test: lint typecheck ui-test pytest

bench: $(STAMP)
	$(BIN)/python bench/ingest.py --events 200000

clean:
	rm -rf $(VENV) relaymeter/web/dist frontend/node_modules tests/artifacts
