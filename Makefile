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

.PHONY: build demo test test-rust test-c test-python test-go test-cpp test-csharp test-unreal test-dist test-triton install dist fuzz-ci venv header check-header fmt lint ci clean golden gpu-bundle bench-bundle pipeline-bench-bundle

venv: $(TORCH_STAMP)
$(TORCH_STAMP):
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet torch==2.11.0 numpy
	touch $@

build: $(TORCH_STAMP)
	cargo build $(CARGO_PROFILE_FLAG) --lib --bins

# Image to GLB + splat PLY in demo-out/, through the C API: with microsoft/TRELLIS-image-large
# when the Hugging Face cache has it (RECON_DEMO_DOWNLOAD=1 fetches it, ~4 GB), else with the
# bundled tiny model (random weights) so that every stage still runs.
demo: build
	$(TARGET_DIR)/recon demo

test: test-rust test-c test-python test-go test-cpp test-csharp test-unreal test-dist test-triton

test-rust: $(TORCH_STAMP)
	cargo test $(CARGO_PROFILE_FLAG)

# The C example, the ABI test and the thread stress test, then the ABI and thread tests again
# under AddressSanitizer + LeakSanitizer (every leak of the library's allocations shows).
test-c: build
	$(MAKE) -C bindings/c test asan LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny

# The pip-installable ctypes package: pytest (installed into .venv when missing), plus a check
# that `pip install` of the package works.
test-python: build
	$(MAKE) -C bindings/python test PYTHON=$(PYTHON) LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# The header-only C++ wrapper, built by CMake as C++17 and C++20 (cmake from Debian via setup.sh).
test-cpp: build
	$(MAKE) -C bindings/cpp test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# Installed copy (include/, lib/ with pkg-config and CMake package files, bindings/). libtorch
# stays outside unless BUNDLE_TORCH=1 (about 3.4 GB copied next to librecon.so).
PREFIX       ?= /usr/local
BUNDLE_TORCH ?= 0
install: build
	bash tools/install.sh --prefix "$(PREFIX)" --libdir "$(TARGET_DIR)" $(if $(filter 1,$(BUNDLE_TORCH)),--bundle-torch)

# dist/recon-<version>-linux-x86_64.tar.gz
dist: build
	bash tools/dist.sh --libdir "$(TARGET_DIR)" $(if $(filter 1,$(BUNDLE_TORCH)),--bundle-torch)

# Builds the tarball, unpacks it into a fresh prefix and builds + runs the C example (pkg-config)
# and a CMake consumer (find_package(recon)) against that copy only.
test-dist: build
	bash tools/test-dist.sh $(TARGET_DIR) $(CURDIR)/tests/fixtures/model_tiny $(CURDIR)/tests/fixtures/images/example.png

# The C# wrapper under mono (Debian's mono-mcs + mono-runtime via setup.sh), with the Unity
# package's copies of its sources checked identical.
test-csharp: build
	$(MAKE) -C bindings/csharp test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# The Unreal plugin's engine-free C++ core (the engine parts are only checked against stubs).
test-unreal: build
	$(MAKE) -C bindings/unreal test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# recon behind Triton Inference Server: the real tritonserver (PyPI nvidia-pytriton, pinned, in
# serving/triton/.venv) on loopback with the tiny model, driven over HTTP/gRPC by tritonclient.
test-triton: build
	$(MAKE) -C serving/triton test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# Go from Debian's golang-go (bindings/go/setup.sh installs it when missing).
test-go: build
	$(MAKE) -C bindings/go test LIBDIR=$(TARGET_DIR) MODEL_DIR=$(CURDIR)/tests/fixtures/model_tiny IMAGE=$(CURDIR)/tests/fixtures/images/example.png

# Bounded coverage-guided fuzzing (fuzz/, cargo-fuzz on stable with RUSTC_BOOTSTRAP=1;
# FUZZ_SECONDS per target, default 20). The first build takes about 13 minutes on 2 cores.
fuzz-ci: $(TORCH_STAMP)
	bash tools/fuzz-ci.sh

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

# The whole-pipeline benchmark against the reference TRELLIS pipeline (benches/RESULTS.md):
# recon, the reference's packages and sources in .bench/, run on the GPU machine in two calls by
# benches/run_pipeline_bench.sh (see tools/pipeline-bench-bundle.sh).
pipeline-bench-bundle: $(TORCH_STAMP)
	bash tools/pipeline-bench-bundle.sh
