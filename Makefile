# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup compiler data cluster test demo bench results clean

setup: $(STAMP)

# torch/torchvision resolve to the wheels already on these machines (see README); elsewhere to PyPI's.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $@

# A C++ compiler for torch.compile's CPU backend (inductor), which the cpu scale uses.
compiler:
	@if command -v g++ >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq g++; \
	else echo "no C++ compiler (g++): runs with compile = true will fail; install g++"; fi

# Real Fashion-MNIST, offline: Debian's dataset-fashion-mnist package (idx files under $(FMNIST)).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found in $(FMNIST); install dataset-fashion-mnist or pass --data-root"; fi

# A real single-node SLURM cluster for the dispatch tests. In CI it must come up; elsewhere the
# SLURM tests skip with the reason when it cannot (not root, no apt-get).
cluster:
	@bash slurm/local_cluster.sh up || { [ -z "$$CI" ] || exit 1; echo "SLURM cluster not started; its tests will skip"; }

test: setup compiler data cluster
	$(PY) -m pytest tests

# The main job: train and evaluate the demo, then its table (results/demo/), and redraw every figure,
# report and the results/README.md index.
demo: setup compiler data
	$(VENV)/bin/ablate run ablations/demo.toml
	$(VENV)/bin/ablate collect ablations/demo.toml
	$(VENV)/bin/ablate results

# Every committed figure, report and results/README.md, redrawn from the committed rows alone.
results: setup
	$(VENV)/bin/ablate results

# Micro-benchmarks (not part of the tests): JSON, tidy table, ratios and a plot under results/bench/.
bench: setup compiler data
	mkdir -p results/bench
	$(PY) -m pytest bench --benchmark-json=results/bench/bench.json
	$(VENV)/bin/ablate bench results/bench/bench.json --out results/bench

clean:
	rm -rf $(VENV) .pytest_cache
