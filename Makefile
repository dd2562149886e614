# make train: build .venv (first time only), then train configs/mnist.yaml.
# make test:  build .venv (first time only), then run the test suite.
# make lint:  ruff with the project's rules (pyproject.toml's [tool.ruff]).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
CONFIG ?= configs/mnist.yaml
# Use the MNIST files beside the checkout when they are there; otherwise torchvision downloads to data/.
DATA   ?= $(if $(wildcard ../shared/data/MNIST/raw/train-images-idx3-ubyte),../shared/data,data)
ARGS   ?=

.PHONY: train test lint clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

train: $(VENV)/.installed
	$(PY) train.py --config $(CONFIG) data.root=$(DATA) $(ARGS)

test: $(VENV)/.installed
	$(PY) -m pytest -q

lint: $(VENV)/.installed
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) *.egg-info
