# Two commands on a fresh machine:
#   make demo   set everything up, then train the small CNN on the embedded digits data
#   make test   set everything up, then run the test suite
#   make reproduce   the reproduction campaign (hours: see docs/reproduction.md)
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: venv demo test bench reproduce clean

# torch goes in first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/resprout train data=digits model=cnn epochs=3 seed=0

test: venv
	$(BIN)/python -m pytest -q

bench: venv
	$(BIN)/python -m benchmarks.foundation
	$(BIN)/python -m benchmarks.engine
	$(BIN)/python -m benchmarks.taps
	$(BIN)/python -m benchmarks.evolution --speed
	$(BIN)/python -m benchmarks.evolution
	$(BIN)/python -m benchmarks.evaluation
	$(BIN)/python -m benchmarks.startup
	$(BIN)/python -m benchmarks.distillation
	$(BIN)/python -m benchmarks.grafting
	$(BIN)/python -m benchmarks.rejuvenation
	$(BIN)/python -m benchmarks.ke_table2

# the reproduction campaign (docs/reproduction.md): trains what results/ lacks, two runs at a time, then rebuilds
# the page; `python -m benchmarks.reproduce --from-results` rebuilds it without training
reproduce: venv
	$(BIN)/python -m benchmarks.reproduce --jobs 2

clean:
	rm -rf $(VENV) runs report .pytest_cache
