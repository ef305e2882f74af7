# make demo: set up .venv and run the whole story: the seed CNN with SGD and Adam on phantoms, then
#            synthetic DICOM -> train -> evaluate -> explain -> report (demo-data/, runs/demo/).
# make test: set up .venv and run the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m engine demo

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) -m pytest benchmarks -q --benchmark-only --benchmark-columns=median,iqr,ops

lint: $(STAMP)
	$(VENV)/bin/ruff check engine kernels models tests benchmarks

clean:
	rm -rf $(VENV) runs demo-data .pytest_cache .benchmarks
