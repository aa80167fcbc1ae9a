# Two commands on a fresh machine:
#   make demo   set everything up, then compare CE, KE and grafting on the embedded digits data (two seeds)
#   make test   set everything up, then run the test suite
#   make test-fast   the in-process tests only (not marked slow), for the edit loop
#   make reproduce   the reproduction campaign (hours: see docs/reproduction.md)
#   make vision / make test-vision   the second environment for detection, re-identification, tv: and timm:
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
BIN    := $(VENV)/bin
# torchvision does not import beside the CPU torch 2.13.0 (its operators need CUDA libraries): the vision venv takes
# PyPI's torch 2.14.1 (a CUDA build that runs on the CPU, about 5.5 GB) with the torchvision and timm made for it,
# in one command so that nothing can pull another torch (docs/vision.md).
VISION_VENV  ?= .venv-vision
VISION_TORCH ?= torch==2.14.1 torchvision==0.29.1 timm==1.0.31
VBIN         := $(VISION_VENV)/bin

.PHONY: venv demo test bench bench-precision bench-detection gpu-check reproduce clean

# torch goes in first, pinned: anything that depends on torch would otherwise pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

venv: $(VENV)/.installed

# The demo: resprout's main job, a comparison of methods on the same data, seeds and budget (it prints the table
# and writes runs/demo/comparison.png). `python -m benchmarks.demo` runs it afresh and puts its output in README.md.
DEMO = method=ce,ke,graft seeds=0,1 data=digits per_class=50 model=cnn epochs=4 generations=5 threads=1

demo: venv
	$(BIN)/resprout compare $(DEMO) --out runs/demo

test: venv
	$(BIN)/python -m pytest -q -m "not vision"

# pip's output goes to a log: a failed install (no network, say) is one line naming pip's first error and the log.
VISION_LOG := $(VISION_VENV)/install.log
$(VISION_VENV)/.installed: pyproject.toml
	@$(PYTHON) -m venv $(VISION_VENV)
	@echo "make vision: $(VISION_TORCH), then -e '.[test,vision]', into $(VISION_VENV) (about 5.5 GB; log: $(VISION_LOG))"
	@{ $(VBIN)/pip install $(VISION_TORCH) && $(VBIN)/pip install -e '.[test,vision]'; } >$(VISION_LOG) 2>&1 || { \
	  echo "make vision: pip failed: $$(grep -m1 '^ERROR' $(VISION_LOG) || tail -n1 $(VISION_LOG)) (log: $(VISION_LOG))" >&2; \
	  exit 1; }
	@touch $@

.PHONY: vision test-vision
vision: $(VISION_VENV)/.installed

# the tests marked `vision`; RESPROUT_REQUIRE_VISION makes a torchvision that fails to import an error, not a skip
test-vision: vision
	RESPROUT_REQUIRE_VISION=1 $(VBIN)/python -m pytest -q -m vision

.PHONY: test-fast
test-fast: venv
	$(BIN)/python -m pytest -q -m "not slow"

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

# detector img/s in training (plain step vs KTAN step) and evaluation, and peak memory (BENCHMARKS.md "detection");
# needs torchvision, so it runs in the vision venv (not part of `make bench`); --quick is a smoke check
bench-detection: vision
	OMP_NUM_THREADS=1 $(VBIN)/python -m benchmarks.detection

# on a CUDA machine: every method in fp32/bf16/fp16, trainer vs hand loop, DDP; without CUDA: what it would run
gpu-check: venv
	$(BIN)/python -m benchmarks.gpu

# the reproduction campaign (docs/reproduction.md): trains what results/ lacks, two runs at a time, then rebuilds
# the page; `python -m benchmarks.reproduce --from-results` rebuilds it without training
reproduce: venv
	$(BIN)/python -m benchmarks.reproduce --jobs 2

clean:
	rm -rf $(VENV) $(VISION_VENV) runs report .pytest_cache
