# The README's two commands: `make run` runs the suite, `make test` passes the tests.
# Both build what they need: a virtual environment with the package, and qemu-img.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN_DIR ?= run

.PHONY: run test lint typecheck pytest qemu-img venv libvirtd clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]' --config-settings editable_mode=compat
	# pip compiles an installed package's bytecode, but not an editable one's.
	$(BIN)/python -m compileall -q simulator conformance images
	touch $(STAMP)

venv: $(STAMP)

qemu-img:
	@scripts/ensure-qemu-img

# A libvirt daemon for the libvirt cases (root): without one they are skipped.
libvirtd: $(STAMP)
	VENV=$(VENV) scripts/libvirtd-service start

run: $(STAMP) qemu-img
	$(BIN)/python scripts/run-suite $(RUN_DIR)

lint: $(STAMP)
	$(BIN)/ruff check simulator conformance images tests benchmarks scripts/run-suite
	$(BIN)/ruff format --check simulator conformance images tests benchmarks scripts/run-suite

typecheck: $(STAMP)
	$(BIN)/mypy --strict simulator conformance images

pytest: $(STAMP) qemu-img
	$(BIN)/pytest -q

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
