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

echo "== onnxruntime on the held-out test split (specc.runtime: no torch imported)"
"$PY" - "$RUN" <<'PY'
import json, sys
from pathlib import Path

import numpy as np
from PIL import Image

import specc.runtime
from specc.data import load_dataset

run = Path(sys.argv[1])
info = json.loads((run / "data.json").read_text())
data = load_dataset(info["source"], input_shape=tuple(info["sample_shape"]), input_dtype="float32", seed=0)
for name in ("lenet.onnx", "lenet.int8.onnx"):
    model = specc.runtime.load(run / name)
    logits = model(data.test.x)[model.outputs[0].name]
    acc = float((logits.argmax(1) == data.test.y).mean())
    print(f"{name}: test accuracy {acc:.2%} on {len(data.test.y)} held-out digits")
assert "torch" not in sys.modules
# a few test digits as PNG files, for `specc predict`
pre = info["preprocess"]
for i in range(3):
    pixels = data.test.x[i, 0] * pre["std"][0] + pre["mean"][0]          # back to [0, 1]
    Image.fromarray(np.clip(pixels * 255, 0, 255).astype(np.uint8)).save(run / f"digit{i}_label{data.test.y[i]}.png")
PY
for png in "$RUN"/digit*_label*.png; do
  echo "== specc predict $(basename "$png")"
  "$SPECC" predict "$RUN/lenet.onnx" --input "$png" --top-k 2
done
