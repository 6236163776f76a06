# The two commands: `make demo` (set-up + the main job) and `make test` (set-up + the tests).
SHELL := /bin/bash
VENV ?= .venv
export PYTHON ?= python3

.PHONY: setup demo test lint reliability bench gpu-prepare gpu-check down clean

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
	@$(VENV)/bin/mypy tritonstack export deploy gateway benchmarks features batch monitoring rollout
	@$(VENV)/bin/lint-imports --no-logo  # the package layers of docs/architecture.md

bench: setup  ## config search + peers side by side (installs the `bench` extra): benchmarks/results
	@set -o pipefail; $(VENV)/bin/pip install -q --disable-pip-version-check -e ".[bench]" \
		$$(command -v nvidia-smi >/dev/null || echo -c requirements/cpu-constraints.txt) \
		2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^\[notice\]" || true; }
	@ls model_repository/minilm/[0-9]*/model.onnx >/dev/null 2>&1 || $(VENV)/bin/tritonstack export
	@# exit 3 = searched, nothing within the p99 budget (config unchanged): the peers still run
	@$(VENV)/bin/tritonstack bench search --save benchmarks/results || [ $$? -eq 3 ]
	@$(VENV)/bin/tritonstack bench peers --save benchmarks/results

gpu-prepare: setup  ## stage .gpu/ for the GPU check (carried MiniLM, references, Triton runtime), size-checked
	@$(VENV)/bin/python -m benchmarks.gpu.stage

# On the lent GPU machine (no .venv there: its python3 has torch). Results into $OUT (the
# device tool's) or .gpu/out; see benchmarks/README.md, "GPU", for the exact `run` call.
gpu-check:  ## the GPU check in one call (dry run without a GPU): JSON + markdown results
	@PYTHONUNBUFFERED=1 $(PYTHON) -m benchmarks.gpu.check --out "$${OUT:-.gpu/out}"

down:  ## stop what `make demo` / `tritonstack up` started
	@$(VENV)/bin/tritonstack down

clean: ## remove build outputs (keeps the environments)
	rm -rf .tritonstack/build .tritonstack/bench model_repository/*/[0-9]*
