# The two commands of the README, and the steps they are made of. Every target is idempotent.
#   make demo   set up, prepare the embedded data sets, train the quickstart experiment
#   make test   set up, lint (ruff check + format --check), run the test suite (.ci/run)

PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
DATA_DIR ?= $(if $(TFDS_DATA_DIR),$(TFDS_DATA_DIR),$(HOME)/tensorflow_datasets)
WORKDIR  ?= workdirs/fashion_mnist_quickstart
CONFIG   ?= experiments/fashion_mnist_quickstart.py
FASHION_MNIST_DIR ?= /usr/share/datasets/fashion-mnist
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup data fashion-mnist-files sword-texts clean-demo

demo: data
	$(PY) -m train.main --config=$(CONFIG) --workdir=$(WORKDIR)

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -n auto --dist loadfile tests

setup: $(VENV)/.installed

# Reinstalls when pyproject.toml changes; the stamp makes a second run a no-op.
$(VENV)/.installed: pyproject.toml
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

# Fashion-MNIST's original idx files come from Debian's dataset-fashion-mnist package.
# Elsewhere: FASHION_MNIST_DIR=/path/with/the/four/idx/files make demo
fashion-mnist-files:
	@if [ -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte.gz" ] || [ -f "$(FASHION_MNIST_DIR)/train-images-idx3-ubyte" ]; then \
	  echo "Fashion-MNIST idx files: $(FASHION_MNIST_DIR)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST idx files not found in $(FASHION_MNIST_DIR) and apt-get is not available:"; \
	  echo "set FASHION_MNIST_DIR to a folder holding train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz,"; \
	  echo "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"; exit 1; \
	fi

# The translation data set's parallel Bibles (public domain) come from Debian's sword packages.
SWORD_MODULES ?= /usr/share/sword/modules/texts/ztext
sword-texts:
	@if [ -d "$(SWORD_MODULES)/engWEB2015eb" ] && [ -d "$(SWORD_MODULES)/spaRV1909eb" ]; then \
	  echo "SWORD Bibles: $(SWORD_MODULES)"; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq sword-text-web sword-text-sparv; \
	else \
	  echo "sword-text-web and sword-text-sparv are not installed and apt-get is not available;"; \
	  echo "data.prepare prepares the other data sets first, then stops at translation with the install hint"; \
	fi

data: setup fashion-mnist-files sword-texts
	$(PY) -m data.prepare --data_dir=$(DATA_DIR) --fashion_mnist_dir=$(FASHION_MNIST_DIR)

clean-demo:
	rm -rf $(WORKDIR)
