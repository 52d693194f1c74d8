# The README's two commands: `make demo` and `make test`. Both create the virtual environment
# they need on first use (and again whenever pyproject.toml changes).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

.PHONY: demo test lint bench env image audit

env: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11) and "headbits needs Python 3.11: make PYTHON=python3.11")'
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	@# setuptools announces every editable install with a warning that needs no action
	PYTHONWARNINGS="ignore:Editable installation" $(VENV)/bin/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

demo: $(STAMP)
	$(VENV)/bin/headbits demo

test: $(STAMP)
	@scripts/link-broker.sh $(VENV) || echo "Broker bindings absent: the native Broker tests will skip"
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

# Speed and memory figures on this machine; bench/pcap.py reads the shared capture corpus.
CORPUS ?= ../shared/data/pcaps
bench: $(STAMP)
	for script in featurize serving pipeline collector; do \
		$(VENV)/bin/python bench/$$script.py || exit 1; done
	$(VENV)/bin/python bench/pcap.py $(CORPUS)

# One OCI image per service (Dockerfile targets), built with buildah (or docker); prints each
# image's build time and size as JSON. IMAGE_TAG, BASE_IMAGE: see scripts/build-images.sh.
image:
	scripts/build-images.sh

# A CycloneDX SBOM of the environment and a known-vulnerability audit (pip-audit), both in
# build/audit/; exit 1: a known vulnerability, 2: a dependency could not be audited.
audit: $(STAMP)
	$(VENV)/bin/python scripts/audit.py build/audit
