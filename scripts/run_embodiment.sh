#!/usr/bin/env bash
# RLinf-style launcher: trains the experiment configs/CONFIG_NAME.py.
#
# Usage: scripts/run_embodiment.sh CONFIG_NAME [overrides...]
#   scripts/run_embodiment.sh mujoco_ppo_mlp
#   scripts/run_embodiment.sh mujoco_ppo_mlp --config.algorithm.gamma=0.98 runner.max_epochs=50
#
# Overrides are passed to `python -m panda_rl.train`; the short form `section.key=value` is
# turned into `--config.section.key=value`; any other argument (e.g. --workdir=DIR) passes
# through untouched. Set PYTHON to choose the interpreter (default: python).
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CONFIG_DIR="${REPO_ROOT}/configs"

available() {
  local names=()
  for f in "${CONFIG_DIR}"/*.py; do
    [ -e "$f" ] || continue
    names+=("$(basename "${f%.py}")")
  done
  echo "${names[*]:-(none)}"
}

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  echo "Usage: $0 CONFIG_NAME [--config.section.key=value | section.key=value ...]" >&2
  echo "Configs in ${CONFIG_DIR}: $(available)" >&2
  exit 2
fi

CONFIG_NAME="${1%.py}"
shift
CONFIG_FILE="${CONFIG_DIR}/${CONFIG_NAME}.py"
if [ ! -f "${CONFIG_FILE}" ]; then
  echo "run_embodiment.sh: no config '${CONFIG_NAME}' (looked for ${CONFIG_FILE})." >&2
  echo "Configs in ${CONFIG_DIR}: $(available)" >&2
  exit 2
fi

ARGS=()
for arg in "$@"; do
  case "$arg" in
    -*) ARGS+=("$arg") ;;
    *=*) ARGS+=("--config.${arg}") ;;
    *) ARGS+=("$arg") ;;
  esac
done

export PYTHONPATH="${REPO_ROOT}${PYTHONPATH:+:${PYTHONPATH}}"
cd "${REPO_ROOT}"
echo "run_embodiment.sh: ${CONFIG_FILE} ${ARGS[*]:-}" >&2
exec "${PYTHON:-python}" -m panda_rl.train --config "${CONFIG_FILE}" ${ARGS[@]+"${ARGS[@]}"}
