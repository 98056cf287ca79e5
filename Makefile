# polyalign: two commands on a fresh machine.
#   make repro   install, then `dvc repro` on the default packs
#   make test    install, then the whole test suite
#   make bench   install, then the benchmarks -> reports/bench.json
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install system browser repro test test-slow bench doctor clean

# pip compiles bytecode one file at a time; compileall -j 0 does it on every core afterwards
# (4.7 -> 3.8 min on the 2-core development machine; files that are not Python 3 are skipped)
PIP := $(BIN)/pip install -q --disable-pip-version-check --no-compile
$(STAMP): requirements.lock requirements-nodeps.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements.lock
	$(PIP) --no-deps -r requirements-nodeps.txt
	$(PIP) --no-deps --no-build-isolation -e .
	-$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null 2>&1
	touch $@

install: $(STAMP)

# System tools the enabled packs ask for (Apertium pairs). Installed where the machine
# allows it (Debian, root); elsewhere `polyalign doctor` names what is missing and the
# pack's translator list moves on to its next entry.
system: install
	@pkgs="$$($(BIN)/polyalign doctor --apt-packages)"; \
	if [ -n "$$pkgs" ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing: $$pkgs"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$pkgs >/dev/null) \
	    || echo "warning: could not install $$pkgs; see 'polyalign doctor'"; \
	elif [ -n "$$pkgs" ]; then echo "not installing $$pkgs (needs Debian and root); see 'polyalign doctor'"; fi

# A headless browser for the tests that render reports/index.html and `dvc plots show` pages
# (they skip, saying so, where none can be installed).
browser:
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing: chromium"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "warning: could not install chromium; the browser checks will be skipped"; fi

repro: system
	$(BIN)/dvc repro

# Sources resolve mirror (POLYALIGN_MIRROR, optional) -> cache -> download (docs/mirror.md). Unset,
# the make targets take a mirror kept in the clone (mirror/, git-ignored: `polyalign mirror fetch
# mirror`) or beside it (../shared/mirror, as on the project's CI machine), where one exists.
ifeq ($(POLYALIGN_MIRROR),)
  FOUND_MIRROR := $(firstword $(patsubst %/.,%,$(wildcard $(CURDIR)/mirror/. $(abspath ../shared/mirror)/.)))
  ifneq ($(FOUND_MIRROR),)
    export POLYALIGN_MIRROR := $(FOUND_MIRROR)
  endif
endif

test: system browser
	@if [ -z "$$POLYALIGN_MIRROR" ]; then echo "no data mirror (POLYALIGN_MIRROR, mirror/, ../shared/mirror): sources come from the cache, then downloads"; \
	elif [ ! -d "$$POLYALIGN_MIRROR" ]; then echo "warning: POLYALIGN_MIRROR=$$POLYALIGN_MIRROR \
	does not exist: sources fall back to the cache, then to downloads (offline, the tests that need data fail)" >&2; \
	else echo "data mirror: $$POLYALIGN_MIRROR"; fi
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -m "not slow" -n auto --dist loadfile

test-slow: install
	$(BIN)/python -m pytest -q -m slow

bench: install
	$(BIN)/python bench/run_all.py $(if $(ISA),--isa $(ISA) --out bench/results/$(shell date +%F)-bench-$(ISA)-capped.json)

doctor: install
	$(BIN)/polyalign doctor

clean:
	rm -rf $(VENV)
