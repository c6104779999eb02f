# Every Python package the project needs is installed here; nothing is assumed to be on the machine.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
MODELS := models
DEMO_MODEL := $(MODELS)/resnet18.onnx

.PHONY: all setup cross-tools demo demo-rpi4 conformance fuzz fuzz-serve test test-fast bench bench-quick bench-serve soak-serve tune-zoo docs corpus clean

all: setup

$(BIN)/kiln: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $@

setup: $(BIN)/kiln

# The Debian packages the ARM tests need: the aarch64 cross compiler (links ARM artifacts and kiln-run) and qemu
# (runs them here). Installed with apt-get when run as root (as CI is); otherwise those tests skip and say why.
cross-tools:
	@if command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64-static >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing g++-aarch64-linux-gnu and qemu-user-static (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			g++-aarch64-linux-gnu qemu-user-static >/dev/null; \
	else \
		echo "note: g++-aarch64-linux-gnu / qemu-user-static are missing and apt-get needs root: ARM tests will skip"; \
	fi

$(DEMO_MODEL): benchmarks/zoo.py | setup
	$(BIN)/python -m benchmarks.zoo resnet18 -o $@

demo: setup $(DEMO_MODEL)
	$(BIN)/kiln compile $(DEMO_MODEL) --target auto --input-shape input=1x3x224x224 -o $(MODELS)/resnet18.so
	$(BIN)/kiln bench $(MODELS)/resnet18.so --model $(DEMO_MODEL) --threads 2 --repeat 10

# The demo model for a Raspberry Pi 4: compiled here, bundled with the aarch64 runtime, run under qemu.
demo-rpi4: setup cross-tools $(DEMO_MODEL)
	$(BIN)/kiln compile $(DEMO_MODEL) --target rpi4 --input-shape input=1x3x224x224 -o $(MODELS)/resnet18.rpi4.so
	$(BIN)/kiln bundle $(MODELS)/resnet18.rpi4.so -o $(MODELS)/rpi4
	cd $(MODELS)/rpi4 && qemu-aarch64-static -L /usr/aarch64-linux-gnu ./kiln-run resnet18.rpi4.so --repeat 1

# Two test processes (pytest-xdist), one per core: most tests compile on one thread. A file's tests stay in one
# process (--dist loadfile: the corpus and conformance files fetch and cache what their tests share).
PYTEST := $(BIN)/python -m pytest -q -n 2 --dist loadfile

test: setup cross-tools
	$(PYTEST)

test-fast: setup cross-tools
	$(PYTEST) -m "not slow"

# Every benchmark model against ONNX Runtime and OpenVINO: the zoo graphs, the PP-OCR models and the real exports
# present (`python -m benchmarks.real_exports export` writes them; needs torch): benchmarks/RESULTS.md and its plots
# (about 20 minutes for the zoo graphs; each real model adds its four compiles and timings).
bench: setup
	$(BIN)/python -m benchmarks.run

# The CI-sized run (two small models, one short round) into benchmarks/quick/.
bench-quick: setup
	$(BIN)/python -m benchmarks.run --quick

# The ONNX backend conformance suite through Kiln and through TVM's importer alone: tests/conformance/STATUS.md and
# known_failures.json (about 10 minutes).
conformance: setup
	$(BIN)/python -m tests.conformance.run

# Every real model of tests/corpus/ (fetched once into models/) compiled and checked against ONNX Runtime:
# tests/corpus/STATUS.md (about a minute).
corpus: setup
	$(BIN)/python -m tests.corpus.run

# kiln compile on 5,000 damaged models and 10,000 structure-aware cases (windows of the real-model corpus mutated
# as valid ONNX, checked against ONNX Runtime; tests/fuzz/): prints every crash, hang, internal error or wrong
# answer with its case number (about 15 minutes; CI runs 300 of each).
fuzz: setup
	$(BIN)/python -m tests.fuzz.run --cases 5000
	$(BIN)/python -m tests.fuzz.run --kind structured --cases 10000

# kiln serve against 20,000 random and mutated KServe v2 requests (tests/fuzz/requests.py; about 2 minutes).
fuzz-serve: setup
	$(BIN)/python -m tests.fuzz.requests --cases 20000

# kiln serve under load (ResNet-18; 5,000 requests at concurrency 32, then 4x overload): the Serving section of
# benchmarks/RESULTS.md (about 3 minutes).
bench-serve: setup
	$(BIN)/python -m benchmarks.serve_load

# kiln serve against a hostile client (aborted uploads, gzip bombs, 404 floods) and its served file rewritten under
# load: the Serving soak section of benchmarks/RESULTS.md (about 3 minutes).
soak-serve: setup
	$(BIN)/python -m benchmarks.serve_soak

# Regenerates the committed tuning records (tuning_logs/): resumes where the last run stopped.
tune-zoo: setup
	$(BIN)/python -m benchmarks.tune_zoo --target x86-avx512 --minutes 8
	$(BIN)/python -m benchmarks.tune_zoo resnet18 --target host --minutes 6

# docs/cli.md from every command's --help (a test fails when it is out of date).
docs: setup
	$(BIN)/python -m compiler.cli.reference > docs/cli.md

clean:
	rm -rf $(VENV) $(MODELS) .pytest_cache
