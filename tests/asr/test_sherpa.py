"""Target ``sherpa-onnx``: the directory sherpa-onnx's offline transducer loads as it is
(metadata, tokens.txt, README, decode.py), decoded in sherpa-onnx with transcripts equal to
kdtool's greedy search over the same ONNX graphs (FP32 and INT8), and the models it refuses.

sherpa-onnx is the optional extra ``kdtool[sherpa]``: without it the decoding tests skip with
that reason (CI installs it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from kdtool_asr.audio import make_frontend
from kdtool_asr.decoding import DecoderInfo, greedy_search, greedy_search_batched
from kdtool_asr.models import SupernetRNNT
from kdtool_asr.sherpa import (
    SPACE,
    SherpaExporter,
    SherpaOptions,
    check_exportable,
    load_recognizer,
    tokens_txt,
)
from kdtool_asr.task import make_export_spec

from kdtool.errors import ExportError
from kdtool.export.exporter import ExportContext

VOCAB = ["<blank>", " ", "'", "a", "b", "c", "d", "e"]


def _meta(**changes: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "vocabulary": VOCAB,
        "preprocessing": {"features": {"kind": "fbank"}},
        "postprocessing": {"blank": 0, "predictor": "stateless", "context_size": 2},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            meta[section][field] = value
        else:
            meta[section] = value
    return meta


def test_tokens_txt_writes_the_blank_first_and_the_space_as_u2581() -> None:
    lines = tokens_txt(VOCAB).splitlines()
    assert lines[0] == "<blk> 0" and lines[1] == f"{SPACE} 1" and lines[2] == "' 2"
    assert [int(line.split()[1]) for line in lines] == list(range(len(VOCAB)))


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        (_meta(postprocessing__predictor="lstm"), "stateless"),
        (_meta(preprocessing={"features": {"kind": "logmel"}}), "log-mel"),
        (_meta(preprocessing={"features": {}}), "log-mel"),  # an old export without a kind
        (_meta(preprocessing={"features": {"kind": "fbank", "high_freq": -200.0}}), "high_freq"),
        (_meta(postprocessing__blank=3), "blank"),
        (_meta(vocabulary=["<blank>", "a b"]), "tokens"),
    ],
)
def test_models_sherpa_onnx_cannot_run_are_refused(meta: dict[str, Any], match: str) -> None:
    with pytest.raises(ExportError, match=match):
        check_exportable("asr_supernet", meta)


def test_a_changed_sample_rate_bins_or_dither_is_allowed() -> None:
    check_exportable("asr_supernet", _meta(preprocessing={"features": {"kind": "fbank", "dither": 1e-5}}))
    with pytest.raises(ExportError, match="asr_supernet"):
        check_exportable("image_classification", _meta())


def _model() -> SupernetRNNT:
    torch.manual_seed(0)
    model = SupernetRNNT(
        vocab_size=len(VOCAB),
        head_dim=4,
        max_heads=2,
        max_layers=2,
        max_ffn=8,
        state_size=4,
        front_channels=8,
        joiner_dim=8,
        predictor_dim=8,
        max_frames=400,
    ).eval()
    with torch.no_grad():  # make blank less dominant and the space likely, so transcripts have words
        model.joiner_out.bias[0] -= 1.0
        model.joiner_out.bias[1] += 0.8
    return model


def _waves() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    waves = []
    for seconds, freq in ((0.3, 200.0), (1.0, 330.0), (2.2, 440.0), (3.5, 150.0)):
        t = np.arange(int(seconds * 16000)) / 16000
        w = 0.2 * np.sin(2 * np.pi * freq * t) * (
            1 + np.sin(2 * np.pi * 2.5 * t)
        ) + 0.02 * rng.standard_normal(t.size)
        waves.append(w.astype(np.float32))
    return waves


def _ort_greedy(directory: Path, metadata: dict[str, Any], waves: list[np.ndarray]) -> list[str]:
    """kdtool's greedy search (one symbol per frame, as sherpa-onnx) over ONNX Runtime sessions of
    the exported files, fed by kdtool's own fbank front end."""
    import onnxruntime as ort

    def graph(name: str) -> Any:
        session = ort.InferenceSession(str(directory / f"{name}.onnx"), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]

        def run(*xs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            outs = session.run(None, {n: x.numpy() for n, x in zip(names, xs, strict=True)})
            return tuple(torch.from_numpy(o) for o in outs)

        return run

    encoder, decoder, joiner = graph("encoder"), graph("decoder"), graph("joiner")
    frontend = make_frontend(metadata["preprocessing"]["features"])
    info = DecoderInfo.from_metadata(metadata)
    texts = []
    for wave in waves:
        feats = frontend(wave)[None]
        enc, lens = encoder(feats, torch.tensor([feats.shape[1]]))
        # frame by frame, as sherpa-onnx: with dynamic INT8 the activation scales depend on
        # how many frames a joiner call sees, so the block-wise fast path could differ
        tokens = greedy_search_batched(enc, lens, decoder, joiner, info, max_symbols_per_frame=1)[0]
        texts.append("".join(VOCAB[t] for t in tokens))
    return texts


def _eager_greedy(waves: list[np.ndarray], max_symbols: int) -> list[str]:
    """kdtool's greedy search in PyTorch on a fresh (not frame-repeating) spec of the model."""
    from kdtool.task import Predictor

    spec = make_export_spec("asr_supernet", _model(), "m", VOCAB, {})
    pred = Predictor.from_spec(spec)
    frontend = make_frontend({})
    info = DecoderInfo.from_metadata(spec.metadata.to_dict())
    texts = []
    for wave in waves:
        feats = frontend(wave)[None]
        enc, lens = pred.graphs["encoder"](feats, torch.tensor([feats.shape[1]]))
        tokens = greedy_search(enc, lens, pred.graphs["decoder"], pred.graphs["joiner"], info, max_symbols)[0]
        texts.append("".join(VOCAB[t] for t in tokens))
    return texts


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_sherpa_onnx_decodes_the_export_like_kdtool_greedy_search(tmp_path: Path, precision: str) -> None:
    pytest.importorskip(
        "sherpa_onnx", reason="the 'sherpa' extra (pip install 'kdtool[sherpa]') is not installed"
    )
    spec = make_export_spec("asr_supernet", _model(), "m", VOCAB, {})
    options = SherpaOptions(precision=precision, quantization="dynamic")
    ctx = ExportContext(target="sherpa-onnx", precision=precision, require_artifact=None, log=lambda _m: None)  # type: ignore[arg-type]
    artifact = SherpaExporter().export(spec, options, tmp_path, ctx)
    names = sorted(p.name for p in artifact.files())
    assert names == ["README.md", "decode.py", "decoder.onnx", "encoder.onnx", "joiner.onnx", "tokens.txt"]
    # the layout and metadata sherpa-onnx's loader reads
    props = {
        g: {p.key: p.value for p in onnx.load(str(tmp_path / f"{g}.onnx")).metadata_props}
        for g in ("encoder", "decoder", "joiner")
    }
    assert props["decoder"]["vocab_size"] == str(len(VOCAB)) and props["decoder"]["context_size"] == "2"
    assert props["encoder"]["model_type"] == "conformer"
    io = {
        g: ([i.name for i in m.graph.input], [o.name for o in m.graph.output])
        for g in ("encoder", "decoder", "joiner")
        for m in [onnx.load(str(tmp_path / f"{g}.onnx"))]
    }
    assert io["encoder"] == (["x", "x_lens"], ["encoder_out", "encoder_out_lens"])
    assert io["decoder"] == (["y"], ["decoder_out"]) and io["joiner"] == (
        ["encoder_out", "decoder_out"],
        ["logit"],
    )
    if precision == "int8":
        ops = {n.op_type for n in onnx.load(str(tmp_path / "encoder.onnx")).graph.node}
        assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "ConvInteger", "DynamicQuantizeMatMul"}
    metadata = spec.metadata.to_dict()
    waves = _waves()
    # FP32: decode_streams in groups of 3 (padded batches). INT8 (dynamic): one at a time, since
    # activation scales are computed over the whole batch and would mix utterances
    runner = load_recognizer(tmp_path, metadata, SherpaOptions(batch=3 if precision == "fp32" else 1))
    got = runner.recognize(waves)
    want = _ort_greedy(tmp_path, metadata, waves)
    assert got == want
    # the encoder repeats its frames 3x: sherpa-onnx's one symbol per frame equals kdtool's
    # greedy search with 3 symbols per frame on the original model
    assert metadata["postprocessing"]["frame_repeat"] == 3
    if precision == "fp32":
        assert got == _eager_greedy(waves, max_symbols=3)
        assert got != _eager_greedy(waves, max_symbols=1)  # the repeat matters on this model
    assert all(got) and any(" " in text for text in got)  # non-trivial, and the space maps back
    # the README's Python invocation, as decode.py, decodes a WAV file the same way
    wav = tmp_path / "clip.wav"
    sf.write(wav, waves[2], 16000, subtype="FLOAT")
    out = subprocess.run(
        [sys.executable, str(tmp_path / "decode.py"), str(wav)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    path, _, text = out.stdout.rstrip("\n").partition(": ")
    # result.text drops leading spaces and spaces before punctuation; the symbols are the same
    assert path == str(wav) and text.replace(" ", "") == want[2].replace(" ", "")
    readme = (tmp_path / "README.md").read_text()
    assert "sherpa-onnx-offline" in readme and "--tokens=tokens.txt" in readme and "from_transducer" in readme
    json.dumps(artifact.details)  # manifest-ready
