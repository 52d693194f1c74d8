#!/bin/sh
# Inside the image build: make /opt/headbits, a virtual environment with the headbits wheel and
# one service's extra, without the packages that service never imports.
#
# Usage: image-venv EXTRA [PACKAGE...]    e.g. image-venv collector devtools traffic
set -eu
extra="$1"
shift
wheel="$(ls /wheels/headbits-*.whl)"
python3 -m venv /opt/headbits
/opt/headbits/bin/pip install --no-cache-dir --quiet "$wheel[$extra]"
site="$(/opt/headbits/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
for package in "$@"; do
    rm -r "$site/headbits/$package"
done
# pip and setuptools only install: the running service needs neither.
/opt/headbits/bin/pip uninstall --quiet --yes pip setuptools
# Compiled once here: the containers' root file system is read-only.
/opt/headbits/bin/python -m compileall -q /opt/headbits >/dev/null
