# Archipel agent -- developer entry points.  Everything runs as root on a
# Debian 12 box (see docs/RIG.md); scripts/bootstrap.sh installs what is missing.
PYTHON_VENV := .venv/bin/python
# the rig is stdlib only: usable before/without the venv
RIG_PY := $(shell test -x .venv/bin/python && echo .venv/bin/python || echo python3)

.PHONY: bootstrap demo test unit clean-rig

bootstrap:
	scripts/bootstrap.sh

demo: bootstrap
	$(PYTHON_VENV) -m rig demo

test: bootstrap
	$(PYTHON_VENV) -m pytest tests

unit: bootstrap
	$(PYTHON_VENV) -m pytest tests/unit

clean-rig:
	$(RIG_PY) -m rig clean
