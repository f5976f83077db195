# Two commands do everything on a fresh machine: `make run` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8501

.PHONY: setup native prepare run test browser-deps clean-cache

setup: $(STAMP) native

# Reinstall whenever the dependencies change; torch/torchvision are pinned in pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,ray,onnx]'
	touch $(STAMP)

# The native HSCC kernel (C++/OpenMP, hscc_core/compress/native), built once per torch version and
# source into ~/.cache/hscc-explorer/native (a no-op when built). Without a compiler the PyTorch
# path runs instead, so a failed build does not stop the setup.
native: $(STAMP)
	$(PY) -m hscc_core.compress.native build || echo "native HSCC kernel not built: the PyTorch path will run"

# Generates the embedded phantom and trains its baseline once (instant afterwards).
prepare: setup
	$(VENV)/bin/hscc prepare

run: prepare
	$(VENV)/bin/streamlit run app.py --server.address $(HOST) --server.port $(PORT) --server.headless true

test: setup browser-deps
	$(PY) -m pytest -q

# The real-browser test drives Debian's Chromium (never a downloaded browser); it skips when absent.
browser-deps:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium could not be installed: tests/test_browser.py will skip"

clean-cache:
	rm -rf cache/runs cache/blobs cache/locks cache/phantom
