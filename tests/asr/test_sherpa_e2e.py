"""End to end on a tiny trained run: ``kdtool export --target sherpa-onnx`` (and ``-int8``)
through the driver, ``kdtool eval``/``predict``/``bench`` running sherpa-onnx, transcripts of
the validation set equal to kdtool's ONNX Runtime greedy search over the same graphs (WER
identical), and ``kdtool predict`` on real audio: stereo 44.1 kHz, corrupt, too short, too
long. Marked slow (a tiny training run, four exports)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from kdtool_asr.audio import resample
from kdtool_asr.decoding import DecoderInfo, error_rates, greedy_search_batched
from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.errors import DataError
from kdtool.export.driver import ExportRequest, export_model
from kdtool.io import load_weights, save_weights
from kdtool.recipe import load_recipe
from kdtool.run import Run
from tests.asr.test_e2e import tiny_asr_recipe

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("espeakng_loader", reason="the embedded data needs the 'speech' extra")
    pytest.importorskip(
        "sherpa_onnx", reason="the 'sherpa' extra (pip install 'kdtool[sherpa]') is not installed"
    )
    tmp = tmp_path_factory.mktemp("asr_sherpa")
    recipe = tiny_asr_recipe(tmp / "runs", tmp / "cache")
    recipe["stages"] = recipe["stages"][:1]  # the supernet only
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    # three training steps leave an all-blank model: lower the blank's bias so that the
    # transcripts compared below are not empty
    summary = json.loads((result / "summary.json").read_text())
    weights = result / summary["models"]["supernet"]["weights"]
    state = load_weights(weights)
    state["joiner_out.bias"][0] -= 4.0
    save_weights(state, weights)
    return result


def _ort_runner_over(directory: Path) -> Any:
    """kdtool's own ONNX Runtime runner over the graphs of a sherpa-onnx export."""
    manifest = json.loads((directory / "manifest.json").read_text())
    onnx_fields = set(OnnxOptions.model_fields)
    options = {k: v for k, v in manifest["options"].items() if k in onnx_fields}
    return OnnxExporter().load(directory, {**manifest, "options": options})


@pytest.mark.parametrize("target", ["sherpa-onnx", "sherpa-onnx-int8"])
def test_sherpa_export_transcribes_the_validation_set_like_kdtool_greedy(run_dir: Path, target: str) -> None:
    out = export_model(ExportRequest(run=run_dir, target=target), echo=lambda _m: None)
    manifest = out.manifest
    assert manifest["format"] == "sherpa" and manifest["status"] == "ok"
    assert {p.name for p in out.directory.iterdir()} >= {
        "encoder.onnx",
        "decoder.onnx",
        "joiner.onnx",
        "tokens.txt",
        "README.md",
        "decode.py",
        "manifest.json",
    }
    assert manifest["metadata"]["postprocessing"]["max_symbols_per_frame"] == 1
    assert manifest["metadata"]["preprocessing"]["features"]["kind"] == "fbank"
    # the export's own metric was measured through sherpa-onnx
    assert manifest["metric"] is not None and manifest["metric"]["name"] == "wer"
    sherpa = runtime.load(out.directory)
    assert sherpa.kind == "sherpa-onnx"
    ort = _ort_runner_over(out.directory)
    assert manifest["metadata"]["postprocessing"]["frame_repeat"] == 3
    task = Run.open(run_dir).task
    dataset = task.build_dataset("val")
    indices = range(len(dataset))  # type: ignore[arg-type]
    refs, hyps_sherpa = task.transcribe(sherpa, dataset, indices)  # type: ignore[attr-defined]
    # kdtool's ONNX Runtime greedy search, one utterance at a time and frame by frame (with
    # dynamic INT8, activation scales depend on what shares a call)
    info = DecoderInfo.from_metadata(manifest["metadata"])
    vocab = manifest["metadata"]["vocabulary"]
    order = _length_order(dataset)
    hyps_ort = []
    for i in order:
        feats = dataset.features(i)[None]  # type: ignore[attr-defined]
        enc, lens = ort.graphs["encoder"](feats, torch.tensor([feats.shape[1]]))[:2]
        tokens = greedy_search_batched(enc, lens, ort.graphs["decoder"], ort.graphs["joiner"], info, 1)[0]
        hyps_ort.append("".join(vocab[t] for t in tokens if t > 0))
    assert refs == [dataset.items[i].text for i in order] and any(hyps_ort)  # type: ignore[attr-defined]
    assert hyps_sherpa == hyps_ort
    assert error_rates(refs, hyps_sherpa) == error_rates(refs, hyps_ort)
    assert manifest["metric"]["artifact"] == pytest.approx(error_rates(refs, hyps_sherpa)["wer"])


def _length_order(dataset: Any) -> list[int]:
    """The order transcribe() returns utterances in (sorted by length, stable)."""
    lengths = [dataset.features(i).shape[0] for i in range(len(dataset))]
    return sorted(range(len(lengths)), key=lambda i: lengths[i])


def test_predict_on_real_audio_through_sherpa_onnx_and_onnx_runtime(run_dir: Path) -> None:
    sherpa_dir = export_model(
        ExportRequest(run=run_dir, target="sherpa-onnx"), echo=lambda _m: None
    ).directory
    onnx_dir = export_model(ExportRequest(run=run_dir, target="onnx"), echo=lambda _m: None).directory
    dataset = Run.open(run_dir).task.build_dataset("val")
    audio = dataset.waveform(0)  # type: ignore[attr-defined]
    folder = run_dir / "audio"
    folder.mkdir(exist_ok=True)
    stereo = folder / "stereo44k.wav"  # 44.1 kHz, two channels: resampled and mixed down
    sf.write(stereo, np.stack([resample(audio, 16000, 44100)] * 2, 1), 44100)
    flac = folder / "mono22k.flac"
    sf.write(flac, resample(audio, 16000, 22050), 22050)
    ogg = folder / "mono.ogg"
    sf.write(ogg, audio, 16000, format="OGG", subtype="VORBIS")
    files = [stereo, flac, ogg]
    by_sherpa = runtime.predict_files(sherpa_dir, files)
    assert [r["runtime"] for r in by_sherpa] == ["sherpa-onnx"] * 3
    for r in by_sherpa:
        assert r["duration_s"] == pytest.approx(audio.size / 16000, abs=0.01)
    # the same samples through kdtool's ONNX Runtime loop (one symbol per frame, as the
    # sherpa export's metadata says) give the same text
    ort_same = _ort_runner_over(sherpa_dir)
    from kdtool_asr.task import AsrSupernetTask

    meta = json.loads((sherpa_dir / "manifest.json").read_text())["metadata"]
    by_ort = AsrSupernetTask.predict_files(ort_same, meta, files, folder)
    assert [r["text"] for r in by_ort] == [r["text"] for r in by_sherpa]
    assert any(r["text"] for r in by_sherpa)
    # clear errors for a corrupt, an empty, a too short and a too long file, on both runtimes
    corrupt = folder / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    short = folder / "ten_samples.wav"
    sf.write(short, np.full(10, 0.1, np.float32), 16000)
    empty = folder / "empty.wav"
    sf.write(empty, np.zeros(0, np.float32), 16000)
    long = folder / "long.wav"  # the tiny recipe's max_duration is 5 s
    sf.write(long, np.tile(audio, int(6.5 * 16000 / audio.size) + 1)[: int(6.5 * 16000)], 16000)
    # (predict_files reports a bad input as an error entry and goes on with the others; the
    # task's own reader raises the DataError that entry carries)
    cases = [(corrupt, r"cannot read audio file .*corrupt\.wav"), (short, r"ten_samples\.wav is too short")]
    cases += [(empty, "empty"), (long, "at most")]
    for directory in (sherpa_dir, onnx_dir):
        results = runtime.predict_files(
            directory, [path for path, _ in cases] + [stereo], out_dir=folder / "p"
        )
        for (path, pattern), result in zip(cases, results, strict=False):
            assert result["input"] == str(path) and re.search(pattern, result["error"]), result
        assert "error" not in results[-1] and results[-1]["text"] == by_sherpa[0]["text"]
    with pytest.raises(DataError, match="cannot read audio file .*corrupt.wav"):
        AsrSupernetTask.predict_files(ort_same, meta, [corrupt], folder)
    # one frame of audio decodes on ONNX Runtime (the encoder input is padded to its minimum)
    tiny = folder / "one_frame.wav"
    sf.write(tiny, audio[:200], 16000)
    assert isinstance(runtime.predict_files(onnx_dir, [tiny])[0]["text"], str)
    assert isinstance(runtime.predict_files(sherpa_dir, [tiny])[0]["text"], str)


def test_cli_predict_and_bench_run_sherpa_onnx(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from typer.testing import CliRunner

    from kdtool.cli import app

    directory = export_model(ExportRequest(run=run_dir, target="sherpa-onnx"), echo=lambda _m: None).directory
    wav = run_dir / "cli.wav"
    sf.write(wav, Run.open(run_dir).task.build_dataset("val").waveform(1), 16000)  # type: ignore[attr-defined]
    result = CliRunner().invoke(app, ["predict", str(directory), str(wav)])
    assert result.exit_code == 0, result.output
    bad = run_dir / "bad.flac"
    bad.write_bytes(b"not audio at all")
    from kdtool.cli import main

    assert main(["predict", str(directory), str(bad)]) == DataError.exit_code  # a message, no traceback
    err = capsys.readouterr()
    printed = (err.out + err.err).replace("\n", "")
    assert "bad.flac" in printed and "Traceback" not in printed
    table = run_dir / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", str(directory), "--no-metric", "--seconds", "0.2", "--out", str(table)]
    )
    assert result.exit_code == 0, result.output
    row = json.loads(table.read_text())["rows"][0]
    assert row["kind"] == "sherpa-onnx" and row["latency_ms_p50"] > 0 and row["throughput"] > 0
