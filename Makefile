# Two commands on a fresh machine:
#   make demo   set everything up, then train the small CNN on the embedded digits data
#   make test   set everything up, then run the test suite
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin

.PHONY: venv demo test bench bench-precision gpu-check clean

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
	$(BIN)/python -m benchmarks.precision

# trainer vs hand loop in fp32 / bf16 / channels-last (BENCHMARKS.md "precision"); --parity: bf16 accuracy (hours)
bench-precision: venv
	$(BIN)/python -m benchmarks.precision

# on a CUDA machine: every method in fp32/bf16/fp16, trainer vs hand loop, DDP; without CUDA: what it would run
gpu-check: venv
	$(BIN)/python -m benchmarks.gpu

clean:
	rm -rf $(VENV) runs report .pytest_cache
