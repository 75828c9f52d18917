# Set-up is part of every target: a fresh machine needs only `make demo` or `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup data test demo bench clean

setup: $(STAMP)

# torch/torchvision resolve to the wheels already on these machines (see README); elsewhere to PyPI's.
$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

# Real Fashion-MNIST, offline: Debian's dataset-fashion-mnist package (idx files under $(FMNIST)).
data:
	@if [ -f $(FMNIST)/train-images-idx3-ubyte.gz ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else echo "Fashion-MNIST not found in $(FMNIST); install dataset-fashion-mnist or pass --data-root"; fi

test: setup data
	$(PY) -m pytest tests

clean:
	rm -rf $(VENV) .pytest_cache
