"""The Kaldi fbank front end: parity with kaldi-native-fbank configured as sherpa-onnx does,
sherpa-onnx's own defaults, frame counts, the log-mel option, and old runs keeping log-mel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kdtool_asr.audio import (
    FBANK_DEFAULTS,
    Fbank,
    LogMel,
    make_frontend,
    min_samples,
    num_frames,
    resolve_features,
)
from kdtool_asr.task import AsrData, AsrOptions, AsrSupernetTask

from kdtool.errors import DataError

knf = pytest.importorskip("kaldi_native_fbank", reason="the fbank front end needs kaldi-native-fbank")


def _speechlike(seconds: float, rate: int = 16000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.2 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(
        t.size
    )
    wave[: rate // 10] = 0.0  # leading silence: the log floor
    return wave.astype(np.float32)


def _reference_knf(wave: np.ndarray) -> np.ndarray:
    """kaldi-native-fbank set up the way sherpa-onnx's FeatureExtractor sets it up
    (sherpa-onnx/csrc/features.cc: InitFbank), independently of kdtool's code."""
    opts = knf.FbankOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = False
    opts.frame_opts.samp_freq = 16000
    opts.frame_opts.frame_shift_ms = 10.0
    opts.frame_opts.frame_length_ms = 25.0
    opts.frame_opts.remove_dc_offset = True
    opts.frame_opts.preemph_coeff = 0.97
    opts.frame_opts.window_type = "povey"
    opts.mel_opts.num_bins = 80
    opts.mel_opts.low_freq = 20.0
    opts.mel_opts.high_freq = -400.0
    fbank = knf.OnlineFbank(opts)
    fbank.accept_waveform(16000, wave.tolist())
    fbank.input_finished()
    return np.stack([fbank.get_frame(i) for i in range(fbank.num_frames_ready)])


def test_fbank_matches_kaldi_native_fbank_as_sherpa_onnx_configures_it() -> None:
    wave = _speechlike(1.234)
    ours = make_frontend({})(wave)
    ref = _reference_knf(wave)
    assert ours.shape == (123, 80) == ref.shape  # round(19744 / 160) frames, snip_edges false
    assert float(np.abs(ours.numpy() - ref).max()) < 1e-4
    # silence sits on the log floor (float epsilon), not -inf
    assert float(ours[0].max()) == pytest.approx(float(np.log(np.finfo(np.float32).eps)), abs=1e-3)


def test_fbank_defaults_equal_sherpa_onnx_feature_extractor_defaults() -> None:
    sherpa_onnx = pytest.importorskip("sherpa_onnx", reason="the 'sherpa' extra is not installed")
    cfg = sherpa_onnx.FeatureExtractorConfig()
    assert cfg.sampling_rate == FBANK_DEFAULTS["sample_rate"]
    assert cfg.feature_dim == FBANK_DEFAULTS["num_mel_bins"]
    assert cfg.low_freq == FBANK_DEFAULTS["low_freq"] and cfg.high_freq == FBANK_DEFAULTS["high_freq"]
    assert cfg.dither == FBANK_DEFAULTS["dither"] and cfg.snip_edges == FBANK_DEFAULTS["snip_edges"]
    assert cfg.normalize_samples  # samples in [-1, 1], as kdtool feeds them


@pytest.mark.parametrize("n", [79, 80, 159, 160, 400, 16000, 16079, 16080])
def test_frame_count_formula_matches_the_front_ends(n: int) -> None:
    wave = np.full(n, 0.01, np.float32)
    assert make_frontend({})(wave).shape[0] == num_frames(n, {})
    logmel = {"kind": "logmel"}
    if n >= min_samples(logmel):
        assert LogMel(logmel)(torch.from_numpy(wave)).shape[0] == num_frames(n, logmel)


def test_minimum_samples_for_one_frame() -> None:
    assert min_samples({}) == 80  # round(80 / 160) = 1 frame with snip_edges false
    assert Fbank({})(np.zeros(79, np.float32)).shape[0] == 0
    assert min_samples({"kind": "logmel"}) == 257
    assert LogMel({})(torch.zeros(257)).shape[0] == 2


def test_feature_settings_resolve_by_kind() -> None:
    assert resolve_features({})["kind"] == "fbank"
    assert resolve_features({}, default_kind="logmel")["kind"] == "logmel"
    assert isinstance(make_frontend({"kind": "logmel"}), LogMel)
    with pytest.raises(DataError, match="n_fft"):
        resolve_features({"n_fft": 400})  # a log-mel setting without kind: logmel
    with pytest.raises(ValueError, match="features"):
        AsrData(features={"kind": "mfcc"})


def _task(tmp_path: Path, **features: object) -> AsrSupernetTask:
    return AsrSupernetTask(AsrOptions(), AsrData(features=features), seed=0, cache_dir=tmp_path / "cache")


def test_a_new_run_records_fbank_and_an_old_run_keeps_log_mel(tmp_path: Path) -> None:
    new_run = tmp_path / "new"
    new_run.mkdir()
    task = _task(tmp_path)
    task.prepare(new_run)
    record = json.loads((new_run / "asr_features.json").read_text())
    assert record["features"]["kind"] == "fbank" and task.features == record["features"]
    # reopened later (export, eval) with a recipe that now asks for log-mel: the record wins
    reopened = _task(tmp_path, kind="logmel")
    reopened.prepare(new_run)
    assert reopened.features["kind"] == "fbank"
    # a run trained before the record existed (models, no record) keeps its log-mel
    old_run = tmp_path / "old"
    (old_run / "models").mkdir(parents=True)
    (old_run / "models" / "supernet.safetensors").write_bytes(b"x")
    old = _task(tmp_path)
    old.prepare(old_run)
    assert old.features["kind"] == "logmel" and not (old_run / "asr_features.json").exists()
    assert old.features["n_fft"] == 512
