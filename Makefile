# Quick start: `make run` serves http://127.0.0.1:8000/, `make test` runs the tests.
# Both create .venv on first use and reinstall only when the packaging changes.
# `make run-postgres DB=postgresql://user:pass@host:port/dbname` serves a board
# kept in PostgreSQL (PORT=8000 and ARGS='--processes=0 ...' may be given too).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PORT   ?= 8000

.PHONY: run run-postgres test clean chromium postgresql nodejs nchan nginx systemd-analyze

run: $(VENV)/.installed
	$(BIN)/talkserver --port=$(PORT) $(ARGS)

# Refused before anything is installed when DB is missing.
ifneq ($(filter run-postgres,$(MAKECMDGOALS)),)
ifeq ($(strip $(DB)),)
$(error make run-postgres needs the database: make run-postgres DB=postgresql://user:pass@host:port/dbname)
endif
endif

# The command is not echoed: DB may hold a password (talkserver logs it without).
run-postgres: $(VENV)/.installed-postgres
	@echo "$(BIN)/talkserver --port=$(PORT) --db=... $(ARGS)"
	@$(BIN)/talkserver --port=$(PORT) --db='$(DB)' $(ARGS)

test: $(VENV)/.installed-test chromium postgresql nodejs nchan nginx systemd-analyze \
      tests/browser/node_modules/.installed benchmarks/peers/node/node_modules/.installed
	$(BIN)/python -m pytest

# The browser tests drive Debian's chromium (Playwright's own browser
# download is not used).  Install it when missing and we are able to.
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
	  echo "chromium is missing and cannot be installed here: the browser tests will fail" >&2

# The PostgreSQL store's tests start a throwaway cluster of their own with
# Debian's server binaries (tests/postgres.py).  Install them when missing
# and we are able to; the system cluster the package starts is not used.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } || \
	  echo "PostgreSQL is missing and cannot be installed here: the PostgreSQL store's tests will fail" >&2

# The deployment tests run docs/deploy.md's nginx site under Debian's nginx,
# as a process of their own (tests/nginx.py), with a certificate made by
# openssl and the document's checks made with curl.  Install them when
# missing and we are able to; the system service the nginx package sets up
# is not used.
nginx:
	@{ command -v nginx || [ -x /usr/sbin/nginx ]; } >/dev/null && { command -v openssl && command -v curl; } >/dev/null || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx openssl curl; } || \
	  echo "nginx, openssl or curl is missing and cannot be installed here: the deployment tests will fail" >&2

# systemd-analyze verifies docs/deploy.md's unit (tests/test_deploy_systemd.py);
# Debian ships it in the systemd package.  Nothing is started with it.
systemd-analyze:
	@command -v systemd-analyze >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd; } || \
	  echo "systemd-analyze is missing and cannot be installed here: the systemd unit's test will fail" >&2

# Node.js runs the benchmarks' reference peer (benchmarks/peers/node, tested
# in tests/test_loadtest_peer.py) and npm installs axe-core, the accessibility
# audit the browser tests inject (tests/browser/package.json).  Install both
# when missing and we are able to.
nodejs:
	@{ command -v node && command -v npm; } >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; } || \
	  echo "node or npm is missing and cannot be installed here: the Node peer and accessibility tests will fail" >&2

# nchan, the C reference peer (benchmarks/peers/nchan, tested in
# tests/test_nchan_peer.py): Debian's nginx and its nchan module.  Install
# them when missing and we are able to; the tests start an nginx of their own.
nchan:
	@{ [ -x /usr/sbin/nginx ] && [ -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; } || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan; } || \
	  echo "nginx or its nchan module is missing and cannot be installed here: the nchan peer's tests will fail" >&2

# From the npm registry, as pinned by package-lock.json; nothing is fetched at test time.
tests/browser/node_modules/.installed: tests/browser/package.json tests/browser/package-lock.json | nodejs
	@{ cd tests/browser && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; } || \
	  echo "axe-core could not be installed with npm: the accessibility tests will fail" >&2

# The Node peer's one package, ws (its WebSocket endpoint), pinned the same way.
benchmarks/peers/node/node_modules/.installed: benchmarks/peers/node/package.json benchmarks/peers/node/package-lock.json | nodejs
	@{ cd benchmarks/peers/node && npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.installed; } || \
	  echo "ws could not be installed with npm: the Node peer will not start" >&2

# A bare Debian python3 has no venv module until python3-venv is installed.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV) && apt-get update -qq && \
	  apt-get install -y -qq python3-venv && $(PYTHON) -m venv $(VENV); }
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

# The postgres extra (asyncpg) into .venv, beside the editable install.
$(VENV)/.installed-postgres: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[postgres]'
	touch $@ $(VENV)/.installed

$(VENV)/.installed-test: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'
	touch $@ $(VENV)/.installed $(VENV)/.installed-postgres

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache tests/browser/node_modules benchmarks/peers/node/node_modules
