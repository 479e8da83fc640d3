"""Quantization-aware distillation of a TODM supernet's largest subnet: a ``student`` stage on
the supernet model, ``init`` from the supernet stage, the frozen FP32 supernet as teacher (KD on
its lattice), then ``kdtool export --precision int8``: encoder, decoder and joiner as QDQ with
the learned scales, equal to the fake-quantized PyTorch model. Marked slow (about 40 s)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from kdtool.export.driver import ExportRequest, export_model
from kdtool.quant import ActQuant, QuantLayer, find_plan
from kdtool.run import Run
from tests.asr.test_e2e import tiny_asr_recipe
from tests.helpers import distill

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("espeakng_loader", reason="the embedded data needs the 'speech' extra")
    tmp = tmp_path_factory.mktemp("asrqad")
    recipe = tiny_asr_recipe(tmp / "runs", tmp / "cache")
    recipe["stages"] = recipe["stages"][:1]  # the supernet stage, no twins
    recipe["stages"].append(
        {
            "name": "supernet_qad",
            "model": "supernet",
            "role": "student",
            "init": "supernet",
            "quantization_aware": "int8",
            "teachers": [{"name": "fp32", "stage": "supernet"}],
            "losses": [{"name": "rnnt"}, {"name": "kd", "loss": "alpha_div"}],
            "optimizer": {"name": "scaled_adam", "lr": 0.003},
            "schedule": {"name": "cosine"},
            "steps": 3,
            "batch_size": 4,
            "keep": "last",
        }
    )
    recipe["deploy_model"] = "supernet_qad"
    return distill(tmp, recipe)


def test_qad_stage_quantizes_the_largest_subnet_and_distils_from_fp32(run_dir: Path) -> None:
    model = Run.open(run_dir).load_model("supernet_qad")
    plan = find_plan(model)
    assert plan is not None and plan["init"] == "supernet"
    wrapped = {n for n, m in model.named_modules() if isinstance(m, QuantLayer)}
    # the largest subnet runs its layers whole, so every block's projections are quantized
    for i in range(2):
        for layer in ("ff1", "ff2", "out"):
            assert f"blocks.{i}.{layer}" in wrapped, (layer, sorted(wrapped))
    assert "front2" in wrapped
    # every quantizer saw data (calibrated through each export graph: encoder, decoder, joiner)
    assert all(float(q.scale.detach()) != 1.0 for q in model.modules() if isinstance(q, ActQuant))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    kd = [r["loss/kd"] for r in rows if r.get("stage") == "supernet_qad" and "loss/kd" in r]
    assert kd and all(np.isfinite(kd))  # the teacher's KD term was trained on


def test_int8_export_writes_learned_qdq_for_every_graph_equal_to_pytorch(run_dir: Path) -> None:
    outcome = export_model(
        ExportRequest(run=run_dir, target="onnx", precision="int8", out=run_dir / "exports" / "qad"),
        echo=lambda _m: None,
    )
    m = outcome.manifest
    graphs = m["details"]["graphs"]
    assert set(graphs) == {"encoder", "decoder", "joiner"}
    for name, info in graphs.items():
        q = info["quantization"]
        assert "learned" in q["scales"] and q["qad_init_stage"] == "supernet", name
        assert q["activations"] == "u8" and q["summary"]["quantize_nodes"] > 0, name
    assert graphs["encoder"]["quantization"]["summary"]["quantized_ops"].get("MatMul", 0) > 0

    # the ONNX encoder equals the fake-quantized PyTorch encoder it came from
    spec = Run.open(run_dir).export_spec("supernet_qad")
    enc = spec.graph("encoder")
    torch.manual_seed(0)
    mels = enc.inputs[0].shape[-1]
    assert isinstance(mels, int)
    feats = torch.randn(2, 40, mels)
    lens = torch.tensor([40, 31])
    with torch.no_grad():
        ref = enc.module(feats, lens)[0].numpy()
    sess = ort.InferenceSession(str(outcome.directory / "encoder.onnx"), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    got = sess.run(None, {names[0]: feats.numpy(), names[1]: lens.numpy()})[0]
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= 0.03 * np.abs(ref).max()
    # the driver decoded the validation set with PyTorch and with the artifact
    assert m["metric"]["name"] == "wer" and m["metric"]["artifact"] is not None
