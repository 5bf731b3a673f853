# recon — build, test and demo. Two commands matter: `make demo` and `make test`.
# Everything the project needs is bootstrapped here: the Python venv that provides libtorch,
# cbindgen for the header check, and the C compiler flags for the C tests.

SHELL := /bin/bash
.DEFAULT_GOAL := build

VENV        := $(CURDIR)/.venv
PYTHON      := $(VENV)/bin/python
TORCH_STAMP := $(VENV)/.torch-2.11.0
TOOLS       := $(CURDIR)/.tools
CBINDGEN    := $(TOOLS)/bin/cbindgen
CBINDGEN_VERSION := 0.29.4
PROFILE     ?= release
CARGO_PROFILE_FLAG := $(if $(filter release,$(PROFILE)),--release,)
TARGET_DIR  := $(CURDIR)/target/$(PROFILE)

# torch-sys finds libtorch through the venv's Python (it runs `python` when VIRTUAL_ENV is set).
export VIRTUAL_ENV := $(VENV)
export PATH := $(VENV)/bin:$(PATH)
export LIBTORCH_USE_PYTORCH := 1
# The test suite runs small networks on CPU; two threads match the CI machine.
export RECON_GOLDEN_DIR ?= $(CURDIR)/tests/fixtures/golden
export RECON_SHARED_GOLDEN_DIR ?= $(abspath $(CURDIR)/../shared/golden)

.PHONY: build demo test test-rust test-c test-python test-go venv header check-header fmt lint ci clean golden gpu-bundle bench-bundle

venv: $(TORCH_STAMP)
$(TORCH_STAMP):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.11.0 numpy
	touch $@

build: $(TORCH_STAMP)
	cargo build $(CARGO_PROFILE_FLAG) --lib --bins

demo: build
	$(TARGET_DIR)/recon demo --model tests/fixtures/model_tiny --image tests/fixtures/images/example.png

test: test-rust test-c test-python test-go

test-rust: $(TORCH_STAMP)
	cargo test $(CARGO_PROFILE_FLAG)

test-c: build
	$(MAKE) -C bindings/c test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny

test-python: build
	RECON_LIBRARY=$(TARGET_DIR)/librecon.so $(PYTHON) bindings/python/tests/test_abi.py

# Go from Debian's golang-go (bindings/go/setup.sh installs it when missing).
test-go: build
	$(MAKE) -C bindings/go test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

$(CBINDGEN):
	cargo install --quiet --locked --root $(TOOLS) cbindgen --version $(CBINDGEN_VERSION)

header: $(CBINDGEN)
	$(CBINDGEN) --quiet --config cbindgen.toml --output include/recon.h src/ffi/mod.rs

# Fails when include/recon.h differs from what src/ffi/ generates.
check-header: $(CBINDGEN)
	$(CBINDGEN) --quiet --config cbindgen.toml --output $(CURDIR)/target/recon.h.check src/ffi/mod.rs
	diff -u include/recon.h $(CURDIR)/target/recon.h.check || \
	  { echo "include/recon.h is stale: run 'make header' and commit it"; exit 1; }

fmt:
	cargo fmt --all

lint: $(TORCH_STAMP)
	cargo fmt --all -- --check
	cargo clippy $(CARGO_PROFILE_FLAG) --all-targets -- -D warnings

ci: test lint check-header

# Regenerates tests/fixtures/golden from the reference implementation (never run by CI).
golden:
	bash tools/golden/setup.sh
	tools/golden/.venv/bin/python tools/golden/generate.py --out tests/fixtures/golden

clean:
	cargo clean

# Release binaries + test binaries + fixtures in .gpu/ for the GPU machine (see tools/gpu-bundle.sh).
gpu-bundle: $(TORCH_STAMP)
	bash tools/gpu-bundle.sh

# The sparse-conv benchmark against spconv (benches/RESULTS.md): the bench binary and spconv's
# files in .bench/bundle/, run on the GPU machine by benches/run_on_gpu.sh (see tools/bench-bundle.sh).
bench-bundle: $(TORCH_STAMP)
	bash tools/bench-bundle.sh
