# Two targets a new user needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch comes first and pinned: these files lie on the build machines' disk. Elsewhere, for a
# CPU-only or another CUDA build: make demo TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test setup test-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq $(TORCH)
	$(BIN)/python -m pip install -qq -e '.[test]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sebre demo

# ImageJ 1.x, Xvfb and a JRE for the tests that cross into Java (installed from Debian when root).
test-deps:
	@if [ ! -e /usr/share/java/ij.jar ] || ! command -v xvfb-run >/dev/null || ! command -v java >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq imagej xvfb default-jre-headless >/dev/null; \
	  else echo "note: install ImageJ 1.x (ij.jar), xvfb and a JRE for the ImageJ tests (apt-get install imagej xvfb)"; fi; \
	fi

# Lint and format checks first: they take seconds, and CI fails on them as on a test.
test: $(STAMP) test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) sebre-demo .pytest_cache
