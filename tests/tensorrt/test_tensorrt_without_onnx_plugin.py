"""The ``tensorrt`` exporter needs no other exporter plugin: with the ``onnx`` plugin blocked
(``KDTOOL_DISABLE_PLUGINS=onnx``) and ``kdtool_onnx`` not importable at all, ``kdtool export
--target tensorrt`` on CPU resolves its target, writes the TensorRT-ready ONNX through the
public ``kdtool.export.onnx_utils`` and is verified by the driver through its stand-in."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.tensorrt.test_tensorrt_export import run_dir  # noqa: F401  (module-scoped fixture)

# Runs the CLI with every import of kdtool_onnx refused, then says which modules were loaded.
_SCRIPT = """
import importlib.abc, json, sys

class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "kdtool_onnx" or name.startswith("kdtool_onnx."):
            raise ImportError(f"blocked by the test: {name}")
        return None

sys.meta_path.insert(0, Refuse())
from kdtool.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
print("LOADED_ONNX_PLUGIN=" + json.dumps(sorted(m for m in sys.modules if m.startswith("kdtool_onnx"))))
sys.exit(code or 0)
"""


def test_tensorrt_export_works_with_the_onnx_plugin_blocked(run_dir: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "trt"
    env = {**os.environ, "KDTOOL_DISABLE_PLUGINS": "onnx", "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT, "export", str(run_dir), "--target", "tensorrt",
         "--precision", "fp32", "--out", str(out), "--eval-limit", "32", "--opt", "build_engine=never"],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text
    assert "unknown target" not in text
    assert "LOADED_ONNX_PLUGIN=[]" in proc.stdout  # kdtool_onnx was never imported
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "tensorrt" and manifest["status"] == "ok"
    assert manifest["graphs"]["model"]["file"] == "model.trt.onnx"
    # the CPU checks ran through the driver: the TensorRT-ready ONNX as the engine's stand-in
    v = manifest["verification"]
    assert v["passed"] is True and v["parity"]
    assert v["checks"]["parity_runtime"].startswith("onnxruntime (TensorRT-ready ONNX")
    assert manifest["metric"]["runtime"].startswith("stand-in: onnxruntime")
    assert manifest["details"]["graphs"]["model"]["source_onnx"] == "from-onnx/model.onnx"
