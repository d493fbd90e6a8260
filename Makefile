# frankenmoe: `make build` builds the real offline example (SmolLM2 2x); `make test` runs the tests.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
RECIPE ?= recipes/smollm2-2x.yaml
export GPTQMODEL_CPU_WORKERS ?= 2

.PHONY: setup build fixtures browser test lint lock repro-check bench clean

setup: $(BIN)/frankenmoe

$(BIN)/frankenmoe: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, on its own: pip then takes it from the local wheel store where there is one.
	$(BIN)/pip install --quiet torch==2.14.1
	# llama.cpp (the gguf stage): built once from the pinned sdist with portable flags,
	# kept in ~/.cache/frankenmoe/wheels (FRANKENMOE_CACHE), and its converter unpacked into the venv.
	$(BIN)/python -m frankenmoe.quantization.llama_cpp setup
	# ray: the tests start a local Ray cluster for `frankenmoe sweep --ray local`.
	$(BIN)/pip install --quiet -e '.[test,ray]'
	touch $@

fixtures: setup
	$(BIN)/frankenmoe fixtures

build: setup fixtures
	$(BIN)/frankenmoe build $(RECIPE)

# Headless Chromium for the routing page's browser test: Debian's own packages, never a
# browser downloaded at run time (apt-get as root, else through sudo).
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium chromium-driver; }

test: setup fixtures browser
	$(BIN)/python -m pytest -q

# ruff at 120 columns (pyproject.toml [tool.ruff]).
lint: setup
	$(BIN)/ruff check .

lock: setup fixtures
	$(BIN)/frankenmoe lock $(RECIPE)

# Two builds from scratch in separate folders; fails naming any file that differs.
repro-check: setup fixtures
	$(BIN)/frankenmoe repro-check $(RECIPE)

# Stage times and memory next to mergekit-moe and GPTQModel alone, and the synthetic
# 2x1B/2x7B scale part and evaluate+verify at 2x7B shapes (ARGS=--quantize-synthetic,
# --scale 1b 7b verify7b), the tiny sweep in one process and on local Ray with a 2x7B
# sweep projected from it (ARGS=--only-sweep for that part alone): bench/results.{json,md}.
bench: setup fixtures
	$(BIN)/python -m bench.run --recipe $(RECIPE) $(ARGS)

clean:
	rm -rf build dist
