# The two commands of the README. Both create .venv on first use and install into it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= pipeline.yaml
PROFILE ?= quick

.PHONY: run test install bench clean

run: $(STAMP)
	$(BIN)/cmr-synth run $(CONFIG) --profile $(PROFILE)

test: $(STAMP)
	$(BIN)/python -m pytest -q tests

install: $(STAMP)

bench: $(STAMP)
	for b in throughput loading augmentation ddp_scaling memory; do $(BIN)/python -m benchmarks.$$b || exit 1; done

# torch first, from the pinned CPU wheel; everything else under the same constraints so that
# nothing can pull a CUDA build of torch.
$(STAMP): setup.cfg constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) runs .pytest_cache
