"""Audio I/O and the front ends shared by training, evaluation and ``kdtool predict``.

Audio is read with ``soundfile`` (WAV, FLAC, OGG/Vorbis; ``torchaudio.load`` now needs
torchcodec and FFmpeg), mixed down to mono and resampled to 16 kHz with
``scipy.signal.resample_poly``.

Two front ends, chosen by ``data.features.kind`` in the recipe:

- ``fbank`` (default): Kaldi-compatible log mel filterbank computed by kaldi-native-fbank,
  with the settings sherpa-onnx's ``FeatureExtractorConfig`` and icefall/lhotse use: 80 bins,
  25 ms povey window, 10 ms shift, ``snip_edges=false`` (frames = round(samples / 160)),
  pre-emphasis 0.97, DC offset removed, mel bins from 20 Hz to Nyquist - 400 Hz, power
  spectrum, natural log floored at float epsilon, no energy term, dither 0, samples in
  [-1, 1]. These are exactly the features sherpa-onnx computes inside its recognisers, so
  a sherpa-onnx export is fed the features it was trained on.
- ``logmel``: the earlier hand-written torchaudio log-mel (25 ms Hann window, 10 ms hop,
  512-point FFT, centred STFT, ``log(mel + 1e-6)``). Kept so that runs trained with it load
  and predict with the features they were trained with: a feature record without ``kind``
  (runs and exports made before the fbank front end) means ``logmel``.

The global mean/variance normalisation lives inside the model (buffers fitted on the
training set), so an app only computes these features.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtool.errors import DataError

FBANK_DEFAULTS: dict[str, Any] = {
    "kind": "fbank",
    "sample_rate": 16000,
    "num_mel_bins": 80,
    "frame_length_ms": 25.0,
    "frame_shift_ms": 10.0,
    "low_freq": 20.0,
    "high_freq": -400.0,
    "dither": 0.0,
    "snip_edges": False,
    "window": "povey",
    "preemph_coeff": 0.97,
    "remove_dc_offset": True,
    "round_to_power_of_two": True,
}

LOGMEL_DEFAULTS: dict[str, Any] = {
    "kind": "logmel",
    "sample_rate": 16000,
    "num_mel_bins": 80,
    "n_fft": 512,
    "win_length": 400,
    "hop_length": 160,
    "f_min": 20.0,
    "f_max": 7600.0,
    "window": "hann",
    "log_offset": 1e-6,
    "mel_scale": "htk",
}

DEFAULTS_BY_KIND: dict[str, dict[str, Any]] = {"fbank": FBANK_DEFAULTS, "logmel": LOGMEL_DEFAULTS}

# The front end of recipes that do not choose one.
FEATURE_DEFAULTS = FBANK_DEFAULTS


def resolve_features(settings: dict[str, Any] | None, *, default_kind: str = "fbank") -> dict[str, Any]:
    """Complete feature settings with their kind's defaults.

    ``default_kind`` applies when ``settings`` has no ``kind``: ``fbank`` for a recipe's
    ``data.features``, ``logmel`` for a record written before the fbank front end existed
    (an old run's or export's metadata)."""
    s = dict(settings or {})
    kind = str(s.get("kind", default_kind))
    if kind not in DEFAULTS_BY_KIND:
        raise DataError(f"unknown feature kind {kind!r}; known: {sorted(DEFAULTS_BY_KIND)}")
    defaults = DEFAULTS_BY_KIND[kind]
    unknown = set(s) - set(defaults)
    if unknown:
        raise DataError(
            f"unknown {kind} feature settings {sorted(unknown)}; known: {sorted(defaults)}",
            hint="data.features takes the settings of its kind (fbank or logmel)",
        )
    return {**defaults, **s, "kind": kind}


def hop_samples(settings: dict[str, Any]) -> int:
    """Samples between two feature frames."""
    if settings["kind"] == "fbank":
        return int(round(settings["sample_rate"] * settings["frame_shift_ms"] / 1000))
    return int(settings["hop_length"])


def window_samples(settings: dict[str, Any]) -> int:
    if settings["kind"] == "fbank":
        return int(round(settings["sample_rate"] * settings["frame_length_ms"] / 1000))
    return int(settings["win_length"])


def num_frames(num_samples: int, settings: dict[str, Any] | None = None) -> int:
    """Frames the front end makes from ``num_samples`` samples."""
    s = resolve_features(settings)
    hop = hop_samples(s)
    if s["kind"] == "logmel":
        return num_samples // hop + 1  # centred STFT
    if s["snip_edges"]:
        win = window_samples(s)
        return 0 if num_samples < win else 1 + (num_samples - win) // hop
    return (num_samples + hop // 2) // hop


def min_samples(settings: dict[str, Any]) -> int:
    """The fewest samples that make one frame (log-mel: the centred STFT's reflect padding
    needs more than ``n_fft / 2`` samples)."""
    s = resolve_features(settings)
    if s["kind"] == "logmel":
        return int(s["n_fft"]) // 2 + 1
    n = 1
    while num_frames(n, s) < 1:
        n += 1
    return n


def resample(audio: np.ndarray, orig: int, new: int) -> np.ndarray:
    """Band-limited polyphase resampling (``scipy.signal.resample_poly``, Kaiser window).

    Much faster than torchaudio's sinc resampler for rates such as 22050 -> 16000.
    """
    if orig == new:
        return audio.astype(np.float32)
    from math import gcd

    from scipy.signal import resample_poly

    g = gcd(int(orig), int(new))
    return resample_poly(audio.astype(np.float32), new // g, orig // g).astype(np.float32)


def read_audio(path: Path, sample_rate: int = 16000) -> np.ndarray:
    """Mono float32 samples at ``sample_rate`` from any file libsndfile reads (WAV, FLAC,
    OGG, any rate, any channel count: channels averaged); a DataError names an unreadable,
    empty or non-finite file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise DataError(f"audio file {path} not found")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / OSError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(
            f"cannot read audio file {path}: {first}",
            hint="give a WAV, FLAC or OGG file (libsndfile formats); convert others with ffmpeg or sox",
        ) from None
    if audio.shape[0] == 0 or audio.shape[1] == 0:
        raise DataError(f"audio file {path} is empty (0 samples)", hint="record or export the audio again")
    if not np.isfinite(audio).all():
        raise DataError(f"audio file {path} has NaN or infinite samples")
    return resample(audio.mean(axis=1), int(rate), sample_rate)


class LogMel(torch.nn.Module):
    """(samples,) or (B, samples) float waveform -> (frames, mels) / (B, frames, mels) log-mel."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        import torchaudio.transforms as T

        s = resolve_features({**(settings or {}), "kind": "logmel"})
        self.settings = s
        self.mel = T.MelSpectrogram(
            sample_rate=s["sample_rate"],
            n_fft=s["n_fft"],
            win_length=s["win_length"],
            hop_length=s["hop_length"],
            f_min=s["f_min"],
            f_max=s["f_max"],
            n_mels=s["num_mel_bins"],
            window_fn=torch.hann_window,
            power=2.0,
            center=True,
            mel_scale=s["mel_scale"],
        )

    @torch.no_grad()
    def forward(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        if isinstance(wave, np.ndarray):
            wave = torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32))
        spec = self.mel(wave.float())
        return torch.log(spec + self.settings["log_offset"]).transpose(-1, -2).contiguous()


class Fbank:
    """Kaldi-compatible log mel filterbank by kaldi-native-fbank (what sherpa-onnx computes):
    (samples,) float waveform in [-1, 1] -> (frames, num_mel_bins) float32 tensor."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        try:
            import kaldi_native_fbank as knf
        except ModuleNotFoundError:
            raise DataError(
                "the fbank front end needs kaldi-native-fbank",
                hint="pip install kaldi-native-fbank (a kdtool dependency), or set data.features.kind: logmel",
            ) from None
        s = resolve_features({**(settings or {}), "kind": "fbank"})
        self.settings = s
        self._knf = knf
        opts = knf.FbankOptions()
        fo = opts.frame_opts
        fo.samp_freq = float(s["sample_rate"])
        fo.frame_length_ms = float(s["frame_length_ms"])
        fo.frame_shift_ms = float(s["frame_shift_ms"])
        fo.dither = float(s["dither"])
        fo.snip_edges = bool(s["snip_edges"])
        fo.window_type = str(s["window"])
        fo.preemph_coeff = float(s["preemph_coeff"])
        fo.remove_dc_offset = bool(s["remove_dc_offset"])
        fo.round_to_power_of_two = bool(s["round_to_power_of_two"])
        mo = opts.mel_opts
        mo.num_bins = int(s["num_mel_bins"])
        mo.low_freq = float(s["low_freq"])
        mo.high_freq = float(s["high_freq"])
        opts.use_energy = False
        opts.use_log_fbank = True
        opts.use_power = True
        self.options = opts

    def __call__(self, wave: torch.Tensor | np.ndarray) -> torch.Tensor:
        samples = wave.detach().cpu().numpy() if isinstance(wave, torch.Tensor) else wave
        samples = np.ascontiguousarray(samples, dtype=np.float32).reshape(-1)
        fbank = self._knf.OnlineFbank(self.options)
        fbank.accept_waveform(float(self.settings["sample_rate"]), samples)
        fbank.input_finished()
        n = fbank.num_frames_ready
        out = np.empty((n, int(self.settings["num_mel_bins"])), dtype=np.float32)
        for i in range(n):
            out[i] = fbank.get_frame(i)
        return torch.from_numpy(out)


def make_frontend(
    settings: dict[str, Any] | None, *, default_kind: str = "fbank"
) -> Callable[[torch.Tensor | np.ndarray], torch.Tensor]:
    """The front end that ``settings`` describe: (samples,) -> (frames, mels)."""
    s = resolve_features(settings, default_kind=default_kind)
    return Fbank(s) if s["kind"] == "fbank" else LogMel(s)


def describe(settings: dict[str, Any]) -> str:
    """One line saying what the features are (for manifests and READMEs)."""
    if settings["kind"] == "fbank":
        return (
            f"Kaldi fbank (kaldi-native-fbank / sherpa-onnx defaults): {settings['num_mel_bins']} bins, "
            f"{settings['frame_length_ms']:g} ms {settings['window']} window, {settings['frame_shift_ms']:g} ms shift, "
            f"snip_edges={str(settings['snip_edges']).lower()}, low {settings['low_freq']:g} Hz, "
            f"high {settings['high_freq']:g} Hz, dither {settings['dither']:g}; frames x bins"
        )
    return "log-mel: log(mel_power + log_offset), frames x mels"
