# Convenience targets; each one calls the scripts that CI uses (scripts/*.sh, scripts/*.py).

VENV_PY := .venv/bin/python

.PHONY: install lint test pyz bench clean distclean

## install: create .venv and pip install -e ".[dev]" into it (no lint, no tests)
install:
	MYX_TEST_INSTALL_ONLY=1 bash scripts/test.sh

## lint: ruff, mypy and the Python 3.9 check of the agent and protocol
lint: install
	bash scripts/lint.sh

## test: everything CI runs (install, lint, zipapp, pytest); extra pytest arguments: make test ARGS="-x tests/protocol"
test:
	bash scripts/test.sh $(ARGS)

## pyz: build dist/myx-agent.pyz
pyz: install
	$(VENV_PY) scripts/build_agent_pyz.py

## bench: run the agent RPC benchmark
bench: install
	$(VENV_PY) bench/agent_rpc.py
	$(VENV_PY) bench/dispatch.py

## clean: remove build outputs and tool caches (keeps .venv)
clean:
	rm -rf dist build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . \( -path ./.venv -o -path ./.git \) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

## distclean: clean, and remove .venv too
distclean: clean
	rm -rf .venv
