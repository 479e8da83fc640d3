"""Audio I/O and the log-mel front end shared by training, evaluation and ``kdtool predict``.

Audio is read with ``soundfile`` (``torchaudio.load`` now needs torchcodec and FFmpeg) and
resampled to 16 kHz with ``scipy.signal.resample_poly``. Features are 80-dim log-mel
(25 ms Hann window, 10 ms hop, 512-point FFT), ``log(mel + 1e-6)``; the global mean/variance
normalisation lives inside the model (buffers fitted on the training set), so an app only
computes these log-mels.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdtool.errors import DataError

FEATURE_DEFAULTS: dict[str, Any] = {
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
    """Mono float32 samples at ``sample_rate``; a clear DataError names an unreadable file."""
    import soundfile as sf

    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError / RuntimeError / OSError
        raise DataError(f"cannot read audio file {path}: {exc}") from None
    if audio.shape[0] == 0:
        raise DataError(f"audio file {path} is empty (0 samples)")
    return resample(audio.mean(axis=1), int(rate), sample_rate)


class LogMel(torch.nn.Module):
    """(samples,) or (B, samples) float waveform -> (frames, mels) / (B, frames, mels) log-mel."""

    def __init__(self, settings: dict[str, Any] | None = None) -> None:
        super().__init__()
        import torchaudio.transforms as T

        s = {**FEATURE_DEFAULTS, **(settings or {})}
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
    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = self.mel(wave.float())
        return torch.log(spec + self.settings["log_offset"]).transpose(-1, -2).contiguous()


def num_frames(num_samples: int, hop_length: int = 160) -> int:
    """Frames ``LogMel`` makes from ``num_samples`` (centred STFT)."""
    return num_samples // hop_length + 1
