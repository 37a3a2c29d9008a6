# Every target is idempotent. `make demo` sets up first when needed, `make test` sets up for development.
VENV      ?= .venv
PYTHON    := $(VENV)/bin/python
STAMP     := $(VENV)/.setup-done
DEV_STAMP := $(VENV)/.setup-dev-done
SETUP_INPUTS := pyproject.toml requirements/constraints.txt scripts/setup.sh

.PHONY: setup setup-dev lock wheelhouse gpu-bundle gpu-rehearsal demo lint test bench clean

# make setup [WHEELHOUSE=DIR]: what a user needs, at the locked versions, from PyPI or (offline) from a
# wheelhouse. No root needed where the compilers and libraries FFCV builds with are installed;
# otherwise it names what is missing (scripts/setup.sh --check-system runs only that check).
WHEELHOUSE ?=
setup:
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh
	touch $(STAMP)

# make setup-dev: setup, plus the test and build extras (pytest, ruff, shellcheck, uv) and, as root
# with apt-get, the system tools of the SLURM and offline-install tests (without them those tests skip).
setup-dev:
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh --dev
	touch $(STAMP) $(DEV_STAMP)

$(STAMP): $(SETUP_INPUTS)
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh
	touch $(STAMP)

$(DEV_STAMP): $(SETUP_INPUTS)
	WHEELHOUSE="$(WHEELHOUSE)" bash scripts/setup.sh --dev
	touch $(STAMP) $(DEV_STAMP)

# Refresh the lock from pyproject.toml's ranges: newest versions, resolved for Python 3.10+ on any platform.
lock: $(DEV_STAMP)
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
wheelhouse: $(DEV_STAMP)
	$(PYTHON) scripts/wheelhouse.py $(DIR) $(if $(PYTHON_VERSION),--python-version $(PYTHON_VERSION)) \
		$(if $(filter skip,$(TORCH)),--skip-torch) $(if $(HAVE),--have $(HAVE))

# make gpu-bundle: gpu-bundle/, what a borrowed GPU machine lacks (wheels for its Python 3.12, the shared
# data), checked to fit with the tracked files in what one command carries. scripts/gpu_evidence.sh uses it.
gpu-bundle: $(DEV_STAMP)
	rm -rf gpu-bundle
	$(PYTHON) scripts/gpu_bundle.py gpu-bundle

# make gpu-rehearsal: scripts/gpu_evidence.sh --rehearse on the CPU in a fresh Python 3.12 venv holding only the
# GPU image's packages (about 5 GB, made once), with the bundle. CI runs it after the tests.
gpu-rehearsal:
	[ -d gpu-bundle/wheels ] || $(MAKE) gpu-bundle
	bash scripts/gpu_rehearsal.sh

demo: $(STAMP)
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash scripts/demo.sh

# Two test processes: most tests wait on single-threaded process start-up or on the SLURM
# scheduler, so two keep both cores busy. Tests that share a module fixture, a SLURM cluster
# or a fixed port run in one process (xdist_group marks).
PYTEST_WORKERS ?= -n 2 --dist loadgroup

# Lint first: a style error fails in seconds, before the suite's minutes.
# -x: shellcheck follows the slurm scripts' `source` of slurm/common.sh.
SHELL_SCRIPTS := $(wildcard scripts/*.sh slurm/*.sh) .ci/run
lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/shellcheck -x $(SHELL_SCRIPTS)

test: lint
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(PYTHON) -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

bench: $(STAMP)
	$(PYTHON) -m visiontrain bench overhead

clean:
	rm -rf runs .pytest_cache
