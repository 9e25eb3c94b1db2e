#!/usr/bin/env bash
# Start the SonoVLM MONAI Label server on the sample studies, in the foreground (Ctrl-C stops it).
# Called by `make demo` as: bash scripts/demo.sh PY SAMPLE_DIR HOST PORT WEIGHTS BACKBONE
#   PY          the venv's python (the venv's `monailabel` script runs whatever python is on PATH)
#   SAMPLE_DIR  studies folder (`sonovlm sample-data` output)
#   HOST PORT   where to listen (the Makefile defaults to 127.0.0.1:8000)
#   WEIGHTS     `demo` (the packaged demo model, trained on simulated phantoms only), a checkpoint
#               file, or empty for a fresh model with random weights
#   BACKBONE    empty (the checkpoint's own), tiny, small, vit-b16, a hub id or a model directory
# Extra `--conf KEY VALUE` pairs can be given in SONOVLM_CONF, e.g. SONOVLM_CONF="adapter lora".
set -euo pipefail

if [ "$#" -ne 6 ]; then
    echo "usage: bash scripts/demo.sh PY SAMPLE_DIR HOST PORT WEIGHTS BACKBONE" >&2
    exit 2
fi
PY=$1
SAMPLE_DIR=$2
HOST=$3
PORT=$4
WEIGHTS=$5
BACKBONE=$6
if [ -z "$WEIGHTS" ] && [ -z "$BACKBONE" ]; then
    echo "error: give WEIGHTS (demo or a checkpoint) or BACKBONE (e.g. BACKBONE=tiny for random weights)" >&2
    exit 2
fi

cd "$(dirname "$0")/.."
if [ ! -d "$SAMPLE_DIR" ]; then
    echo "error: studies folder $SAMPLE_DIR does not exist (run: make sample-data)" >&2
    exit 2
fi

EXTRA=()
[ -n "$WEIGHTS" ] && EXTRA+=(--conf weights "$WEIGHTS")
[ -n "$BACKBONE" ] && EXTRA+=(--conf backbone "$BACKBONE")
if [ -n "${SONOVLM_CONF:-}" ]; then
    read -r -a words <<<"$SONOVLM_CONF"
    if [ $(( ${#words[@]} % 2 )) -ne 0 ]; then
        echo "error: SONOVLM_CONF must hold KEY VALUE pairs, got: $SONOVLM_CONF" >&2
        exit 2
    fi
    for ((i = 0; i < ${#words[@]}; i += 2)); do
        EXTRA+=(--conf "${words[i]}" "${words[i + 1]}")
    done
fi

if [ "$WEIGHTS" = demo ]; then
    echo "Serving the DEMO model: trained on simulated phantoms, not patients. Not for clinical use."
fi
echo "SonoVLM server: http://$HOST:$PORT (weights ${WEIGHTS:-none}, backbone ${BACKBONE:-as recorded in the checkpoint}," \
    "studies $SAMPLE_DIR); Ctrl-C stops it"
exec "$PY" -m monailabel.main start_server \
    --app monailabel_app \
    --studies "$SAMPLE_DIR" \
    "${EXTRA[@]}" \
    --host "$HOST" \
    --port "$PORT"
