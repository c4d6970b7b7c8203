# sbilab: two commands do all set-up on a machine with Python >= 3.10 and make.
#   make demo   create .venv if missing, install, run the main analysis
#   make test   create .venv if missing, install with the test extra, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.sbilab-installed
DEMO   ?= analyses/resonance_mass
OUT    ?= out/$(notdir $(DEMO))
PYTEST_ARGS ?=

.PHONY: demo test install bench-quick clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[test,plot]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/sbilab run $(DEMO) --out $(OUT)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench-quick: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b --quick --json || exit 1; done

clean:
	rm -rf $(VENV) out .pytest_cache
