# Every target is idempotent. `make demo` and `make test` set up first when needed.
VENV   ?= .venv
PYTHON := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-done

.PHONY: setup lock wheelhouse demo lint test bench clean

# make setup [WHEELHOUSE=DIR]: the locked versions, from PyPI or (offline) from a wheelhouse.
WHEELHOUSE ?=
setup:
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh
	touch $(STAMP)

$(STAMP): pyproject.toml requirements/constraints.txt scripts/setup.sh
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh
	touch $(STAMP)

# Refresh the lock from pyproject.toml's ranges: newest versions, resolved for Python 3.10+ on any platform.
lock: $(STAMP)
	$(VENV)/bin/uv pip compile pyproject.toml --all-extras --universal --python-version 3.10 \
		--no-build-isolation --python $(PYTHON) --override requirements/overrides.txt \
		--custom-compile-command "make lock" --upgrade -o requirements/constraints.txt

# make wheelhouse [DIR=wheelhouse] [PYTHON_VERSION=3.12] [TORCH=skip] [HAVE=target-pip-freeze.txt]
DIR ?= wheelhouse
PYTHON_VERSION ?=
TORCH ?=
HAVE ?=
ifneq ($(filter wheelhouse,$(MAKECMDGOALS)),)
ifneq ($(filter-out skip,$(TORCH)),)
$(error TORCH=$(TORCH) is not understood (TORCH=skip leaves torch out))
endif
endif
wheelhouse: $(STAMP)
	$(PYTHON) scripts/wheelhouse.py $(DIR) $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(filter skip,$(TORCH)),--skip-torch) $(if $(HAVE),--have $(HAVE))

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
	$(PYTHON) -m visiontrain bench overhead

clean:
	rm -rf runs .pytest_cache
