#!/usr/bin/env bash
# specc demo: train LeNet on scikit-learn's digits (resized to 1x28x28), print the test accuracy.
# Target: >= 97% test accuracy in about 30-60 s on 2 CPU cores. Run with `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."

SPECC=${SPECC:-.venv/bin/specc}
PY=${PY:-.venv/bin/python}
RUN=${RUN:-runs/demo-lenet}
SPEC=${SPEC:-specs/lenet.yaml}

echo "== check every bundled spec (static shapes and parameter counts; no torch import)"
"$SPECC" check specs/*.yaml

rm -rf "$RUN"
echo "== train $SPEC on digits -> $RUN"
"$SPECC" train "$SPEC" --data digits --out "$RUN" --quiet --device cpu   # the spec's own train: recipe

"$PY" - "$RUN" <<'PY'
import json, sys
final = json.load(open(f"{sys.argv[1]}/metrics.json"))["final"]
acc = final["test_accuracy"]
print(f"test accuracy: {acc:.2%} ({final['step']} steps, {final['wall_s']:.1f} s of training)")
sys.exit(0 if acc >= 0.97 else 1)
PY

# ---- export + onnxruntime steps (issue 6) go below this line ---------------------------------
echo "== export $RUN -> $RUN/lenet.onnx (parity verified in onnxruntime) + lenet.int8.onnx (static int8, calibrated on the training split; accuracy checked)"
"$SPECC" export "$SPEC" --weights "$RUN" --out "$RUN/lenet.onnx" --int8

echo "== onnxruntime on the run's own held-out test split (specc eval: the split rebuilt from RUN/data.json)"
"$SPECC" eval "$RUN/lenet.onnx" --data "$RUN" --out "$RUN/eval"
"$SPECC" eval "$RUN/lenet.int8.onnx" --data "$RUN"

# a few raw digits as PNG files, for `specc predict` (it applies the recorded resize and standardisation)
"$PY" - "$RUN" <<'PY'
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.datasets import load_digits

digits = load_digits()
for i in (0, 1, 2):
    pixels = (digits.images[-1 - i] * 255 / 16).round().astype(np.uint8)   # 8x8, 0..16 -> 0..255
    Image.fromarray(pixels).save(Path(sys.argv[1]) / f"digit{i}_label{digits.target[-1 - i]}.png")
PY
for png in "$RUN"/digit*_label*.png; do
  echo "== specc predict $(basename "$png")"
  "$SPECC" predict "$RUN/lenet.onnx" --input "$png" --top-k 2
done
