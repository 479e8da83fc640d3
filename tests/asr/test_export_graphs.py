"""The three deploy graphs of an (untrained) model exported to ONNX: greedy decoding over the
ONNX Runtime sessions equals decoding over the PyTorch graphs, for both prediction networks
(the LSTM one carries explicit state inputs/outputs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from kdtool_asr.decoding import DecoderInfo, greedy_search
from kdtool_asr.models import SupernetRNNT
from kdtool_asr.task import make_export_spec
from kdtool_onnx.exporter import OnnxOptions, export_graph

from kdtool.export.onnx_utils import make_session, session_callable
from kdtool.task import Predictor


@pytest.mark.parametrize("predictor", ["stateless", pytest.param("lstm", marks=pytest.mark.slow)])
def test_three_graphs_decode_like_pytorch(tmp_path: Path, predictor: str) -> None:
    torch.manual_seed(0)
    model = SupernetRNNT(
        vocab_size=9,
        head_dim=4,
        max_heads=2,
        max_layers=2,
        max_ffn=8,
        state_size=4,
        front_channels=8,
        joiner_dim=8,
        predictor_dim=8,
        predictor=predictor,
        max_frames=300,  # fmt: skip
    ).eval()
    with torch.no_grad():  # make blank less dominant so that hypotheses are not empty
        model.joiner_out.bias[0] -= 1.0
    spec = make_export_spec("asr_supernet", model, "m", [f"c{i}" for i in range(9)], {"sample_rate": 16000})
    assert spec.graph_names == ["encoder", "decoder", "joiner"]
    options = OnnxOptions()
    graphs = {}
    for graph in spec.graphs:
        path = tmp_path / f"{graph.name}.onnx"
        export_graph(graph, path, options, target="onnx")
        session = make_session(path, options, provider="cpu")
        graphs[graph.name] = session_callable(
            session, [t.name for t in graph.inputs], [t.dtype for t in graph.inputs]
        )
    ort = Predictor(graphs, kind="onnxruntime", metadata=spec.metadata.to_dict())
    ref = Predictor.from_spec(spec)
    feats = torch.randn(3, 150, 80)
    lengths = torch.tensor([150, 97, 40])
    enc_t, len_t = ref.graphs["encoder"](feats, lengths)
    enc_o, len_o = ort.graphs["encoder"](feats, lengths)
    assert torch.equal(len_t, len_o) and torch.allclose(enc_t, enc_o, atol=1e-4)
    info = DecoderInfo.from_metadata(spec.metadata.to_dict())
    assert info.kind == predictor
    hyp_t = greedy_search(enc_t, len_t, ref.graphs["decoder"], ref.graphs["joiner"], info)
    hyp_o = greedy_search(enc_o, len_o, ort.graphs["decoder"], ort.graphs["joiner"], info)
    assert hyp_t == hyp_o and any(hyp_t)
    if predictor == "lstm":
        assert [t.role for t in spec.graph("decoder").inputs] == ["data", "state_in", "state_in"]
