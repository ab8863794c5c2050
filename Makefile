# Two commands on a fresh machine: `make demo` and `make test`. Each builds .venv itself.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint protos bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, from the CPU wheel: otherwise peft/shap pull a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/cohort demo

# CI=true runs the slow end-to-end tests too.
test: $(STAMP)
	$(PY) -m pytest $(if $(CI),,-m "not slow") -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy coordinator client crypto models explain cli protos/wire.py protos/serde.py protos/transport.py protos/data_schema.py

protos: $(STAMP)
	$(PY) scripts/gen_protos.py

bench: $(STAMP)
	$(PY) bench/round.py
	$(PY) bench/secure_agg.py --quick
	$(PY) bench/models.py --quick
	$(PY) bench/audit.py
	$(PY) bench/load.py --clients 20

clean:
	rm -rf $(VENV) cohort-data .pytest_cache
