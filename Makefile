# The two commands: `make serve` and `make test`. Both set everything up from a clean clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: setup serve test lint bench gpu-wheels vendor clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel on local disk; nothing later may replace it.
	$(PIP) install --disable-pip-version-check -q torch==2.13.0
	$(PIP) install --disable-pip-version-check -q -e '.[test,ray]'
	touch $(STAMP)

# The console's browser tests drive Debian's chromium (tests/console): installed from Debian's packages where it is
# missing (as root, else with sudo). Playwright never downloads a browser here.
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; else \
		echo "chromium is missing and we are not root: apt-get install chromium" >&2; exit 1; fi; \
	$$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends chromium

setup: $(STAMP) $(CHROMIUM)

serve: $(STAMP)
	$(VENV)/bin/moecloud serve

test: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/engine.py

# The GPU machine (benchmarks/gpu_check.py) reaches no package index, and its image's python3 (3.12) has torch,
# transformers, safetensors, tokenizers, rich and pytest but not these: their wheels, at this venv's versions, go in
# .whl/ to be carried there (6 MB).
GPU_WHEELS := annotated-types llguidance pydantic pydantic-core pydantic-settings python-dotenv typing-extensions \
	typing-inspection
gpu-wheels: | $(STAMP)
	rm -rf .whl
	$(PIP) download --disable-pip-version-check -q --no-deps --only-binary=:all: --python-version 3.12 \
		--implementation cp $(foreach n,31 28 27 17,--platform manylinux_2_$(n)_x86_64) --platform manylinux2014_x86_64 \
		-d .whl $$($(PY) -c 'import importlib.metadata as m, sys; print(*(n + "==" + m.version(n) for n in sys.argv[1:]))' \
		$(GPU_WHEELS))

# The Swagger UI that /docs serves, from the npm registry at a pinned version: the gateway serves it itself, so the
# API reference works on a host without internet. Only what /docs loads is kept (and the licence).
SWAGGER_UI := 5.35.0
SWAGGER_DIR := src/moecloud/console/vendor/swagger-ui
vendor:
	rm -rf .vendor-tmp && mkdir -p .vendor-tmp $(SWAGGER_DIR)
	cd .vendor-tmp && npm pack --silent swagger-ui-dist@$(SWAGGER_UI) >/dev/null && tar xzf swagger-ui-dist-$(SWAGGER_UI).tgz
	cp .vendor-tmp/package/swagger-ui-bundle.js .vendor-tmp/package/swagger-ui.css .vendor-tmp/package/favicon-32x32.png \
		.vendor-tmp/package/LICENSE $(SWAGGER_DIR)/
	echo "swagger-ui-dist $(SWAGGER_UI) (npm)" > $(SWAGGER_DIR)/VERSION
	rm -rf .vendor-tmp

clean:
	rm -rf $(VENV) .pytest_cache
