# The README's two commands. Both create .venv/ on first use (or when pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
WORKDIR ?= workdir/demo

.PHONY: test demo bench clean chromium

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: $(VENV)/.installed chromium
	$(PY) -m pytest -n 2 tests

# tests/test_report.py renders the HTML report in headless Chromium; a fresh Debian/Ubuntu
# machine gets it from apt (as root).
chromium:
	@command -v chromium || command -v chromium-browser || command -v google-chrome || \
	  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

demo: $(VENV)/.installed
	$(PY) -m itm_jax.cli.demo --workdir=$(WORKDIR)

bench: $(VENV)/.installed
	$(PY) benchmarks/metrics_bench.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
