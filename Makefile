# Two entry points: `make demo` and `make test`. Each builds .venv on first use only.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.sinder-installed
# What .venv takes (torch 2.14.1 with its CUDA libraries is most of it): checked before pip fills a disk.
INSTALL_GB ?= 7

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	@(test -x $(PY) && $(PY) -c "import torch" 2>/dev/null) || $(PYTHON) tools/check_free_space.py $(VENV) --gb $(INSTALL_GB)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sinder demo --out demo_out --overwrite

# Two workers, one file each at a time: CLI tests are mostly interpreter start-up on one core.
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile

# The quick loop while editing: everything but the tests marked slow (end-to-end CLI runs, repairs, the zoo).
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/theory_speed.py
	$(PY) benchmarks/repair_speed.py
	$(PY) benchmarks/detection_zoo.py
	$(PY) benchmarks/repair_zoo.py
	$(PY) benchmarks/clamp_tradeoff.py
	$(PY) benchmarks/interpolation_layers.py
	$(PY) benchmarks/compare_zoo.py
	$(PY) benchmarks/thread_load.py

clean:
	rm -rf demo_out .pytest_cache
