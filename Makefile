# Two commands on a fresh clone:
#   make demo   bake the default project into .cache/demo and run its smoke pipeline (train, evaluate,
#               register, promote, serve one request)
#   make test   install everything and run the whole template test suite (includes `mkdocs build --strict`)
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build, and 2.13.0 CPU is what the
# template is tested with. The generated project itself keeps a range (torch>=2.4).
TORCH ?= torch==2.13.0
UV ?= uv==0.13.9
DEMO_DIR := .cache/demo
# The llama_cpp extra's llama-cpp-python, built once into WHEELS, and llama.cpp's converter (see `llama-cpp`).
LLAMA_CPP_VERSION := 0.3.36
WHEELS := .cache/wheels
LLAMA_CPP := .cache/llama.cpp/convert_hf_to_gguf.py
export HF_HUB_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help install llama-cpp demo test test-fast docs docs-serve lint clean

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-installs only when a requirements source changes. torch comes from pip (it finds the local CPU
# wheel); the rest from uv, which resolves and installs the ~200 packages about 4x faster than pip
# (measured: 47 s against 230 s on 2 cores). uv leaves the installed torch alone: it satisfies torch>=2.4.
$(VENV)/.installed: $(BIN)/python requirements-dev.txt {{cookiecutter.project_slug}}/pyproject.toml scripts/project_requirements.py $(LLAMA_CPP)
	$(BIN)/python -m pip install --quiet "$(TORCH)" "$(UV)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.txt
	$(BIN)/python scripts/project_requirements.py dev llama-cpp > $(VENV)/project-requirements.txt
	$(BIN)/uv pip install --quiet --python $(BIN)/python --find-links $(WHEELS) -r $(VENV)/project-requirements.txt
	touch $@

install: $(VENV)/.installed  ## Create .venv with the template tools and the generated project's dependencies

# The llama_cpp extra's llama-cpp-python has no Linux wheel on PyPI: it is built from its source release once
# (about 5 min on 2 cores) into $(WHEELS), where `install` takes it from; its llama.cpp source (the GGUF converter
# the extra's tests run) is unpacked into .cache/llama.cpp. .ci/run builds it before it times `make test`.
# GGML_NATIVE=OFF with the features named: a native build can die with "Illegal instruction" on a CPU that reports
# features it cannot run (measured on this project's CI machine).
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	$(if $(shell grep -m1 -o avx512f /proc/cpuinfo 2>/dev/null),-DGGML_AVX512=ON)
$(LLAMA_CPP): | $(BIN)/python
	mkdir -p $(WHEELS)
	$(BIN)/python -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$(LLAMA_CPP_VERSION)" -d $(WHEELS)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel --quiet --no-deps \
		$(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -w $(WHEELS)
	rm -rf .cache/llama.cpp && mkdir -p .cache/llama.cpp
	tar -xzf $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION).tar.gz -C .cache/llama.cpp --strip-components=3 \
		$(foreach part,convert_hf_to_gguf.py conversion gguf-py,llama_cpp_python-$(LLAMA_CPP_VERSION)/vendor/llama.cpp/$(part))

llama-cpp: $(LLAMA_CPP)  ## Build the llama-cpp-python wheel for the llama_cpp extra's tests (once, about 5 min)

demo: install  ## Bake the default project into .cache/demo and run its smoke pipeline there
	rm -rf $(DEMO_DIR)
	$(BIN)/cookiecutter --no-input --output-dir $(DEMO_DIR) .
	project=$$(ls -d $(DEMO_DIR)/*/) && \
	$(BIN)/python scripts/overlay_venv.py $$project/.venv && \
	$$project/.venv/bin/python -m pip install --quiet --no-deps -e $$project && \
	$(MAKE) --no-print-directory -C $$project data train evaluate && \
	$(BIN)/python scripts/demo_request.py $$project && \
	echo "Demo project in $$project: its README.md now shows the results (table, plots, samples) and MODEL_CARD.md the model card; cd into it and run 'make help' for more."

# Two pytest workers: the default bake's suite runs as two shards, one per worker, each beside a share of the
# other bakes (the xdist groups in tests/test_bake.py); one process kept the second core mostly idle.
test:  ## Install, run the whole template test suite and the strict docs build; prints the time taken
	@start=$$(date +%s); \
	$(MAKE) --no-print-directory install && \
	$(BIN)/python -m pytest tests -n 2 --dist loadgroup --durations=10 && \
	$(BIN)/mkdocs build --strict --site-dir .cache/site && \
	echo "make test: passed in $$(( $$(date +%s) - start )) s, install included"

test-fast:  install  ## Template tests without running the baked projects' suites
	$(BIN)/python -m pytest tests -m "not bake_suite"

docs: install  ## Build the docs site into site/
	$(BIN)/mkdocs build --strict

docs-serve: install  ## Serve the docs on http://127.0.0.1:8001
	$(BIN)/mkdocs serve --dev-addr 127.0.0.1:8001

lint: install  ## ruff on the hooks, tests and scripts (the project's sources are linted through bakes)
	$(BIN)/ruff check hooks tests scripts
	$(BIN)/ruff format --check hooks tests scripts

clean:  ## Remove the virtual environment and caches
	rm -rf $(VENV) .cache site .pytest_cache .ruff_cache
