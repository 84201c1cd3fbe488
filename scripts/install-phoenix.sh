#!/usr/bin/env bash
# Install the Arize Phoenix trace viewer into its own virtual environment, so that
# its dependencies never mix with the engine's. The trace-export tests start
# `phoenix serve` from this venv.
#
# Environment:
#   PHOENIX_VENV     venv path (default: ~/.cache/engine-tests/phoenix-venv)
#   PHOENIX_VERSION  arize-phoenix version to install (default: pinned below)
#   PHOENIX_PYTHON   interpreter that creates the venv (default: python3)
#
# Running it again is cheap: it exits early when the venv already has the
# requested version. The venv takes roughly 850 MB on disk.
set -euo pipefail

readonly DEFAULT_VERSION="20.26.1"
venv="${PHOENIX_VENV:-${HOME}/.cache/engine-tests/phoenix-venv}"
version="${PHOENIX_VERSION:-${DEFAULT_VERSION}}"
python="${PHOENIX_PYTHON:-python3}"

installed_version() {
    # Prints the installed arize-phoenix version, or nothing when it is missing.
    if [[ -x "${venv}/bin/python" ]]; then
        "${venv}/bin/python" -c \
            'import importlib.metadata as m; print(m.version("arize-phoenix"))' \
            2>/dev/null || true
    fi
}

current="$(installed_version)"
if [[ "${current}" == "${version}" && -x "${venv}/bin/phoenix" ]]; then
    echo "arize-phoenix ${version} is already installed in ${venv}"
    exit 0
fi

if ! command -v "${python}" >/dev/null; then
    echo "error: interpreter '${python}' not found; set PHOENIX_PYTHON" \
        "to a Python 3.11-3.14 executable (arize-phoenix 20.26.1 requires >=3.11,<3.15)" >&2
    exit 1
fi

if [[ ! -x "${venv}/bin/python" ]]; then
    echo "creating venv ${venv} with ${python}"
    mkdir -p "$(dirname "${venv}")"
    "${python}" -m venv "${venv}"
fi

echo "installing arize-phoenix==${version} into ${venv} (was: ${current:-none})"
"${venv}/bin/python" -m pip install --quiet --upgrade pip
"${venv}/bin/python" -m pip install --quiet "arize-phoenix==${version}"

current="$(installed_version)"
if [[ "${current}" != "${version}" ]]; then
    echo "error: expected arize-phoenix ${version} in ${venv}," \
        "found '${current:-none}'; delete ${venv} and run this script again" >&2
    exit 1
fi
echo "arize-phoenix ${version} installed in ${venv}"
