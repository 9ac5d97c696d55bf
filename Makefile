# Two commands: `make demo` and `make test`. Both create the venv when missing and install into it
# exactly what uv.lock pins (uv itself comes from PyPI at the version below, into the venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := $(VENV)/bin/uv
# uv installs into $(VENV), never downloads a Python of its own, and leaves uv itself in place (--inexact).
UV_ENV := UV_PROJECT_ENVIRONMENT=$(abspath $(VENV)) UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1
SYNC := $(UV_ENV) $(UV) sync --frozen --inexact --quiet
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: demo test test-fast lint typecheck lock lock-check bench clean down

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check 'uv==$(UV_VERSION)'

$(STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC)
	touch $@

$(DEV_STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev
	touch $(STAMP) $@

$(BENCH_STAMP): pyproject.toml uv.lock | $(UV)
	$(SYNC) --extra dev --extra bench
	touch $(STAMP) $(DEV_STAMP) $@

demo: $(STAMP)
	$(VENV)/bin/fleet demo

# Re-resolve uv.lock from pyproject.toml's ranges (the only target that changes the lock).
lock: | $(UV)
	$(UV_ENV) $(UV) lock

# Fails when pyproject.toml and uv.lock disagree (someone changed a range without `make lock`).
lock-check: | $(UV)
	@$(UV_ENV) $(UV) lock --check --offline --quiet || (echo "uv.lock is out of date with pyproject.toml: run 'make lock'" >&2; exit 1)

# Chromium (Debian's, from apt) for the rendered-page tests: browser downloads are not possible here.
# promtool (Debian's `prometheus` package) for tests/deploy: `promtool check rules` and `test rules`.
# Test files run two at a time (TEST_JOBS; most integration time is waiting on idle timers and
# subprocess start-up); the fault-injection (chaos) tests run alone afterwards: their leases and heartbeats
# are timed in seconds.
TEST_JOBS ?= 2
test: $(DEV_STAMP) lock-check
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null || echo "warning: could not install chromium; the rendered-page test will be skipped"
	@command -v promtool >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null || echo "warning: could not install prometheus (promtool); the alert-rule tests will be skipped"
	$(VENV)/bin/ruff check scraper middlewares pipelines settings tests
	$(VENV)/bin/mypy
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_JOBS) --dist loadfile --durations=10 -m "not chaos" tests
	$(PY) -m pytest -q -p no:cacheprovider --durations=5 -m chaos tests

test-fast: $(DEV_STAMP)
	$(PY) -m pytest -q -m "not chaos" tests

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check scraper middlewares pipelines settings tests

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
