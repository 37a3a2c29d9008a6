# Every target is idempotent. `make demo` and `make test` set up first when needed.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

.PHONY: setup demo lint test bench clean

setup:
	bash scripts/setup.sh
	touch $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# Two test processes: most tests wait on single-threaded process start-up or on the SLURM
# scheduler, so two keep both cores busy. Tests that share a module fixture, a SLURM cluster
# or a fixed port run in one process (xdist_group marks).
PYTEST_WORKERS ?= -n 2 --dist loadgroup

# Lint first: a style error fails in seconds, before the suite's minutes.
lint: $(STAMP)
	$(VENV)/bin/ruff check .

test: lint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PYTHON) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PYTHON) -m visiontrain.bench overhead

clean:
	rm -rf runs .pytest_cache
