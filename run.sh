#!/usr/bin/env bash
# foldblend end to end.
#   bash run.sh              set up .venv, build the demo competition (and its fold configs) if input/ is empty,
#                            then scan -> folds -> [init, when folds/ holds no fold config] -> train every
#                            folds/*.yaml -> blend -> submit -> summary -> report
#   bash run.sh test         set up .venv with the dev extras, lint (ruff) and run the test suite
#   bash run.sh <stage> ...  any single stage, e.g. `bash run.sh train folds/cnn_small.yaml --folds 0`
# PRESET=fast|medium|best and TIME_LIMIT=2h choose what `foldblend init` writes (only when folds/ holds no config).
# GPUS=0,1 bash run.sh picks the devices folds train on (default: every GPU when there are several).
# EXECUTOR=ray bash run.sh trains every fold as a Ray task (RAY_ADDRESS=auto: the cluster `ray start` began;
# needs foldblend[ray], which the dev extras of `bash run.sh test` include).
# Rerunning is cheap: finished folds, scans and splits are reused; a changed fold config retrains.
set -euo pipefail
cd "$(dirname "$0")"

VENV=.venv
PY="$VENV/bin/python"

setup() {
  if [ ! -x "$PY" ]; then
    echo "creating $VENV/"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.foldblend-installed"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "installing foldblend and its dependencies into $VENV/ (first run: several minutes)"
    local free_gb
    # a check, never a stop: where df cannot tell (set -e with pipefail would end the script), say nothing
    free_gb=$(df -Pk "$VENV" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}') || free_gb=""
    if [ -n "$free_gb" ] && [ "$free_gb" -lt 11 ]; then
      echo "warning: ${free_gb} GB free where $VENV/ lies; the install (PyTorch with its CUDA libraries) takes" \
        "about 7 GB and up to 10 GB while it runs" >&2
    fi
    # no wheel cache: PyTorch's CUDA libraries are gigabytes of downloads, and a cached copy of each would
    # add to the disk the install needs
    "$PY" -m pip install --quiet --no-cache-dir --upgrade pip
    "$PY" -m pip install --quiet --no-cache-dir -e ".[dev]"
    touch "$stamp"
  fi
}

foldblend() { "$PY" -m foldblend.cli "$@"; }

main() {
  setup
  local start=$SECONDS
  foldblend demo
  foldblend scan
  foldblend folds
  if ! compgen -G "folds/*.yaml" > /dev/null; then  # no fold config yet: write them for this data and machine
    foldblend init ${PRESET:+--preset "$PRESET"} ${TIME_LIMIT:+--time-limit "$TIME_LIMIT"}
  fi
  foldblend train ${GPUS:+--gpus "$GPUS"} ${EXECUTOR:+--executor "$EXECUTOR"}
  foldblend blend ${BLEND_ARGS:---method greedy --tta weighted --bias}
  foldblend submit
  foldblend summary
  foldblend report
  echo "pipeline time: $((SECONDS - start)) s"
}

case "${1:-}" in
  "") main ;;
  test) shift; setup; "$PY" -m ruff check src tests bench; exec "$PY" -m pytest -q "$@" ;;
  *) setup; foldblend "$@" ;;
esac
