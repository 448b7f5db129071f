# The two user-facing commands. Each first sets up whatever this machine still lacks
# (redis-server/Java/Maven via apt, the .venv with the project installed), then runs.
#   make demo   - the demo on a real local Kafka + Redis stack
#   make test   - the whole test suite (starts its own stack, stops it afterwards)
#   make bench  - `dispatch bench`: latency, throughput, producer rate, savings (JSON + PNG)

PYTHON ?= python3.11
VENV   := .venv
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT    := $(if $(shell command -v redis-server),,redis-server) \
          $(if $(shell command -v java),,default-jre-headless) \
          $(if $(shell command -v mvn),,maven) \
          $(if $(shell command -v kcat),,kcat) \
          $(if $(shell command -v chromium),,chromium)

.PHONY: demo test bench setup system-deps

demo: setup
	$(VENV)/bin/dispatch demo

bench: setup
	$(VENV)/bin/dispatch bench $(BENCH_ARGS)

# pytest exits 5 when it collected no test: that is a failure here, not a pass.
test: setup
	@$(VENV)/bin/python -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest ran no tests (exit 5)" >&2; exit 1; fi; exit $$rc

setup: system-deps $(STAMP)

system-deps:
ifneq ($(strip $(APT)),)
	$(SUDO) apt-get update -q
	$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(strip $(APT))
endif

# Re-installs only when pyproject.toml changes (or the venv is new).
$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "$(PYTHON) not found: install Python 3.11" >&2; exit 1; }
	[ -x $(VENV)/bin/python ] || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@
