# Two commands: `make demo` and `make test`. Both create .venv when missing and install into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-fast lint typecheck bench clean down

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP) $@

$(BENCH_STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet -e '.[dev,bench]'
	touch $(STAMP) $(DEV_STAMP) $@

demo: $(STAMP)
	$(VENV)/bin/fleet demo

# Chromium (Debian's, from apt) for the rendered-page tests: browser downloads are not possible here.
test: $(DEV_STAMP)
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || echo "warning: could not install chromium; the rendered-page test will be skipped"
	$(VENV)/bin/ruff check scraper middlewares pipelines settings
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider tests

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not chaos" tests

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check scraper middlewares pipelines settings

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

# Static site server for the bench: nginx from apt when missing (the bench falls back to darkhttpd/busybox httpd).
bench: $(BENCH_STAMP)
	@command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx || (apt-get update && (apt-get install -y nginx-light || apt-get install -y nginx)) || echo "warning: could not install nginx"
	$(PY) -m tests.bench.run

down: $(STAMP)
	$(VENV)/bin/fleet down

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
