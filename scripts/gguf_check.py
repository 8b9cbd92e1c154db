"""Reads a GGUF file with ggml-org's own `gguf` package and checks it against what the writer meant.

Usage: gguf_check.py FILE EXPECTED.json VALUES_DIR

EXPECTED.json: {"metadata": {key: value}, "tensors": [{"name", "shape" (row-major), "type"}]};
VALUES_DIR/<name>.f32: each tensor's values as little-endian f32. Each tensor's bytes must equal
`gguf.quants.quantize` of those values (ggml's reference quantizers, in numpy), and its
dequantized values must be close to them. Prints one JSON line; exits 1 on a mismatch.
"""
import json
import sys

import numpy as np
import gguf

path, expected_path, values_dir = sys.argv[1:4]
expected = json.load(open(expected_path))
reader = gguf.GGUFReader(path)
problems = []

for key, want in expected["metadata"].items():
    field = reader.get_field(key)
    if field is None:
        problems.append(f"missing key {key}")
        continue
    got = field.contents()
    if isinstance(want, float):
        ok = abs(got - want) < 1e-6
    elif isinstance(want, list) and want and isinstance(want[0], float):
        ok = np.allclose(got, want)
    else:
        ok = got == want
    if not ok:
        problems.append(f"{key}: {got!r} != {want!r}")

tensors = {t.name: t for t in reader.tensors}
if len(tensors) != len(expected["tensors"]):
    problems.append(f"{len(tensors)} tensors, expected {len(expected['tensors'])}")
for want in expected["tensors"]:
    t = tensors.get(want["name"])
    if t is None:
        problems.append(f"missing tensor {want['name']}")
        continue
    kind = gguf.GGMLQuantizationType[want["type"]]
    if t.tensor_type != kind:
        problems.append(f"{t.name}: type {t.tensor_type.name}")
    # The reader lists dimensions innermost first.
    if list(map(int, t.shape)) != list(reversed(want["shape"])):
        problems.append(f"{t.name}: shape {list(t.shape)} (innermost first)")
    values = np.fromfile(f"{values_dir}/{t.name}.f32", dtype="<f4").reshape(want["shape"])
    reference = gguf.quants.quantize(values, kind)
    if reference.tobytes() != np.asarray(t.data).tobytes():
        problems.append(f"{t.name}: bytes differ from gguf.quants.quantize")
    back = gguf.quants.dequantize(np.asarray(t.data), kind).reshape(want["shape"])
    err = float(np.abs(back - values).max())
    if err > 0.2 * float(np.abs(values).max()):
        problems.append(f"{t.name}: dequantized off by {err}")

print(json.dumps({"tensors": len(tensors), "keys": len(reader.fields), "problems": problems}))
sys.exit(1 if problems else 0)
