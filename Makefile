# The two set-up commands of the README:
#   make run    install into .venv and run the gateway on config/gateway.toml (embedded default)
#   make test   install into .venv (with the test extras) and run the whole test suite
#   make bench  the benchmark and its budget verdicts (bench/README.md); not part of the tests
# Nothing but python3 (3.11+) is needed; everything else comes from PyPI.

PYTHON ?= python3
VENV ?= .venv
PIP := $(VENV)/bin/python -m pip
# The openai 1.x line, for the tests that check the gateway against both SDK lines. It cannot share
# a site-packages with openai 3.x, so it lives in its own folder and runs in a subprocess.
OPENAI1 := $(VENV)/openai-1.x

.PHONY: install run test bench

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml examples/respan-provider-example/pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[test,servers]'
	# The example third-party provider, installed by pip as a user would: proves the plugin path end to end.
	$(PIP) install -q --no-build-isolation -e examples/respan-provider-example
	$(PIP) install -q --upgrade --target $(OPENAI1) 'openai>=1.100,<2'
	touch $@

install: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/respan-gateway serve $(ARGS)

test: $(VENV)/.installed-test
	$(VENV)/bin/python -m pytest $(ARGS)

# The benchmark (bench/README.md): a short run of every scenario; ARGS="--full" for the 10-minute soak.
$(VENV)/.installed-bench: pyproject.toml $(VENV)/.installed
	$(PIP) install -q -e '.[bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(VENV)/bin/python bench/run.py $(ARGS)
