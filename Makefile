# The two commands: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
SHELL := /bin/bash
VENV ?= .venv
export PYTHON ?= python3

.PHONY: setup demo test lint reliability bench down clean

setup:  ## create/refresh the environments and Debian packages (idempotent)
	@bash deploy/bootstrap.sh

demo: setup  ## export MiniLM, start Triton, embed over gRPC + REST, perf_analyzer, summary
	@$(VENV)/bin/tritonstack demo

test: setup lint  ## lint + the whole test suite (unit + integration against real Triton)
	@$(VENV)/bin/python -m pytest

reliability: setup  ## the reliability/security scenarios alone, figures into benchmarks/results/
	@TRITONSTACK_RELIABILITY_REPORT=benchmarks/results/$$(date +%F)-vm-reliability \
		$(VENV)/bin/python -m pytest tests/reliability

lint: setup
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/ruff format --check .
	@$(VENV)/bin/mypy tritonstack export deploy gateway benchmarks features batch

bench: setup  ## config search + peers side by side (installs the `bench` extra): benchmarks/results
	@set -o pipefail; $(VENV)/bin/pip install -q --disable-pip-version-check -e ".[bench]" \
		$$(command -v nvidia-smi >/dev/null || echo -c requirements/cpu-constraints.txt) \
		2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^\[notice\]" || true; }
	@ls model_repository/minilm/[0-9]*/model.onnx >/dev/null 2>&1 || $(VENV)/bin/tritonstack export
	@# exit 3 = searched, nothing within the p99 budget (config unchanged): the peers still run
	@$(VENV)/bin/tritonstack bench search --save benchmarks/results || [ $$? -eq 3 ]
	@$(VENV)/bin/tritonstack bench peers --save benchmarks/results

down:  ## stop what `make demo` / `tritonstack up` started
	@$(VENV)/bin/tritonstack down

clean: ## remove build outputs (keeps the environments)
	rm -rf .tritonstack/build .tritonstack/bench model_repository/*/[0-9]*
