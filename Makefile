# dedupd developer entry points. Every target creates .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUN_STAMP  := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test test-slow test-all lint bench clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { \
	  echo "python3 -m venv failed; installing python3-venv" >&2; \
	  apt-get update && apt-get install -y python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# pdqhash publishes no wheels (sdist only, 0.2.8): pip builds it, with a C++ compiler
	@# and Python's headers.
	@command -v g++ >/dev/null && $(BIN)/python -c "import sysconfig, os, sys; \
	  sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))" || { \
	  echo "installing g++ and python3-dev to build pdqhash" >&2; \
	  apt-get update && apt-get install -y g++ python3-dev; }

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,viz]'
	touch $@ $(RUN_STAMP)

## make browser: Debian's chromium and its chromedriver, for the review page's browser test.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  echo "installing chromium and chromium-driver for tests/test_review_browser.py" >&2; \
	  apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }

## make run: build a demo photo folder under demo/ and let dedupd find its duplicates.
run: $(RUN_STAMP)
	$(BIN)/python scripts/make_demo.py demo/photos
	$(BIN)/dedupd scan --config config/demo.yaml

## make test: the fast suite (under 10 minutes on 2 cores; tests over ~2.5 s are marked slow).
test: $(TEST_STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

## make test-slow: long suites and the browser test (run by CI); screenshots in artifacts/.
test-slow: $(TEST_STAMP) browser
	$(BIN)/python -m pytest -m slow -q || [ $$? -eq 5 ]  # 5: no slow tests selected

test-all: test test-slow

lint: $(TEST_STAMP)
	$(BIN)/ruff check dedupd tests bench scripts
	$(BIN)/mypy

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test,viz,bench]'
	touch $@ $(TEST_STAMP) $(RUN_STAMP)

## make bench: every benchmark (~15 min on 2 cores); JSON and accuracy.md in bench/results/.
bench: $(BENCH_STAMP)
	$(BIN)/python bench/hashing.py
	$(BIN)/python bench/index.py
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/scan.py
	$(BIN)/python bench/scan_cost.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/imports.py
	$(BIN)/python bench/accuracy.py
	$(BIN)/python bench/likeness.py
	$(BIN)/python bench/review.py
	$(BIN)/python bench/video.py
	$(BIN)/python bench/votes.py
	$(BIN)/python bench/heic.py
	@echo "bench/small.py needs perception in a venv of its own: see bench/README.md"

clean:
	rm -rf $(VENV) demo artifacts .pytest_cache .mypy_cache .ruff_cache
