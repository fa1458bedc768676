# Two targets a new user needs: `make demo` and `make test`. Both build .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch comes first and pinned: these files lie on the build machines' disk. Elsewhere, for a
# CPU-only or another CUDA build: make demo TORCH="torch torchvision"
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: demo test setup test-deps model clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq $(TORCH)
	$(BIN)/python -m pip install -qq -e '.[test]'
	touch $@

setup: $(STAMP)

demo: $(STAMP)
	$(BIN)/sebre demo

# Rebuild the shipped model from ../shared/data (the GLTa sections and the Allen CCFv3 atlas; set
# SEBRE_GLTA and SEBRE_ATLAS to read them elsewhere), score it on the GLTa test sections, and put it
# in the package.
model: $(STAMP)
	$(BIN)/python examples/train_real_sections.py --recipe mouse --out sebre-runs/mouse --fluorescence
	cp sebre-runs/mouse/mouse.safetensors sebre_ij/models/mouse.safetensors

# ImageJ 1.x, Xvfb and a JRE for the tests that cross into Java, and the libraries Qt needs to draw
# napari on Xvfb (installed from Debian when root).
DEBS := imagej xvfb default-jre-headless libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 \
	libxcb-randr0 libxcb-render-util0 libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libgl1 libegl1 libfontconfig1 libdbus-1-3
test-deps:
	@if ! dpkg -s $(DEBS) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(DEBS) >/dev/null; \
	  else echo "note: install $(DEBS) for the ImageJ and napari tests (apt-get install ...)"; fi; \
	fi

# Lint and format checks first: they take seconds, and CI fails on them as on a test.
test: $(STAMP) test-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) sebre-demo .pytest_cache
