#!/bin/sh
# Make Broker's native Python bindings importable from the project's virtualenv.
#
# Broker's bindings ship with Zeek or with Debian's python3-broker package, outside any venv.
# Adding the whole system dist-packages to sys.path would also shadow the venv's pip, setuptools
# and yaml with Debian's older copies, so only the `broker` package directory is linked.
#
# Usage: scripts/link-broker.sh [VENV_DIR]   (default: .venv)
# Environment: BROKER_PYTHON_DIR overrides where the `broker` package is looked for.
set -eu

venv="${1:-.venv}"
python="$venv/bin/python"
if [ ! -x "$python" ]; then
    echo "link-broker: no Python at $python; create the virtualenv first" >&2
    exit 2
fi

if "$python" -c "import broker" 2>/dev/null; then
    exit 0
fi

source_dir="${BROKER_PYTHON_DIR:-}"
if [ -z "$source_dir" ]; then
    for candidate in \
        /usr/lib/python3/dist-packages/broker \
        /opt/zeek/lib/zeek/python/broker \
        /opt/zeek/lib64/zeek/python/broker \
        /usr/local/zeek/lib/zeek/python/broker; do
        if [ -d "$candidate" ]; then
            source_dir="$candidate"
            break
        fi
    done
fi
if [ -z "$source_dir" ] || [ ! -d "$source_dir" ]; then
    echo "link-broker: Broker's Python bindings not found; install python3-broker (Debian)" \
         "or point BROKER_PYTHON_DIR at the 'broker' package of a Zeek installation" >&2
    exit 1
fi

site_packages="$("$python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ln -sfn "$source_dir" "$site_packages/broker"
"$python" -c "import broker; print('link-broker: broker', broker.Version.string(), 'from $source_dir')"
