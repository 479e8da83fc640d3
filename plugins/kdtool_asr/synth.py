"""Embedded default data: speech synthesised at run time with eSpeak NG (no downloads).

eSpeak NG (https://github.com/espeak-ng/espeak-ng) is GPL-3.0-or-later. It is used through the
PyPI package ``espeakng-loader`` (which ships ``libespeak-ng`` and its voice data) and driven
through ``ctypes``; kdtool does not link or redistribute it. It is an optional extra:
``pip install 'kdtool[speech]'``. Without it, :func:`synthesize` falls back to nothing: the task
raises a clear error that names the install line (or use a LibriSpeech / manifest data source).

Output is bit-identical across runs: ``espeak_ng_SetRandSeed(0)`` is called before each
utterance (libespeak-ng still carries a little state from one utterance to the next, so the
set is generated in one fixed order, never in parallel), the voice, rate and pitch are drawn from a seeded generator, and the noise added
afterwards is seeded per utterance.
"""

from __future__ import annotations

import ctypes
import threading
from functools import lru_cache
from typing import Any

import numpy as np

ESPEAK_LICENSE = "eSpeak NG: GPL-3.0-or-later (optional extra 'speech', package espeakng-loader)"
INSTALL_HINT = "pip install 'kdtool[speech]'  (installs espeakng-loader, eSpeak NG, GPL-3)"

# espeak_AUDIO_OUTPUT and espeak_PARAMETER values from speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_espeakRATE, _espeakVOLUME, _espeakPITCH, _espeakRANGE = 1, 2, 3, 4
_espeakCHARS_UTF8 = 1

VARIANTS = [
    "",
    "m1",
    "m2",
    "m3",
    "m4",
    "m5",
    "m6",
    "m7",
    "f1",
    "f2",
    "f3",
    "f4",
    "f5",
    "klatt",
    "klatt2",
    "klatt3",
]

_SYNTH_CB = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """One initialised libespeak-ng (the library keeps global state: calls are serialised)."""

    def __init__(self) -> None:
        import espeakng_loader

        self.lib = ctypes.CDLL(str(espeakng_loader.get_library_path()))
        lib = self.lib
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SYNTH_CB]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        data = str(espeakng_loader.get_data_path()).encode()
        rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed (returned {rate}) with data path {data.decode()}")
        self.sample_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def callback(wav: Any, n: int, events: Any) -> int:
            if n > 0 and wav:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _SYNTH_CB(callback)  # keep a reference: ctypes does not
        lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()

    def speak(self, text: str, *, voice: str, rate: int, pitch: int, pitch_range: int = 50) -> np.ndarray:
        """16-bit samples at ``self.sample_rate`` as float32 in [-1, 1]."""
        with self.lock:
            lib = self.lib
            lib.espeak_ng_SetRandSeed(0)
            if lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise RuntimeError(f"eSpeak NG has no voice {voice!r}")
            lib.espeak_SetParameter(_espeakRATE, int(rate), 0)
            lib.espeak_SetParameter(_espeakPITCH, int(pitch), 0)
            lib.espeak_SetParameter(_espeakRANGE, int(pitch_range), 0)
            lib.espeak_SetParameter(_espeakVOLUME, 100, 0)
            self._chunks = []
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            status = lib.espeak_Synth(buf, len(buf), 0, 0, 0, _espeakCHARS_UTF8, None, None)
            if status != 0:
                raise RuntimeError(f"espeak_Synth failed with status {status} on {text!r}")
            chunks, self._chunks = self._chunks, []
        audio = np.concatenate(chunks) if chunks else np.zeros(0, np.int16)
        return audio.astype(np.float32) / 32768.0


@lru_cache(maxsize=1)
def espeak() -> _Espeak:
    """The process-wide eSpeak NG engine (``ModuleNotFoundError`` if the extra is missing)."""
    return _Espeak()


def espeak_available() -> bool:
    try:
        espeak()
    except (ModuleNotFoundError, OSError, RuntimeError):
        return False
    return True


# --------------------------------------------------------------------------- corpus

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_WORDS = (
    "the a red blue green small big cat dog bird fish sun moon tree house car boat man woman child "
    "runs jumps sees likes eats finds has is was on in by near under over fast slow old new good "
    "bad hot cold day night water light sound"
).split()


def words() -> list[str]:
    """Every word the synthetic corpus uses (its alphabet is the tokenizer's)."""
    return DIGITS + _WORDS


def make_text(rng: np.random.Generator, kind: str) -> str:
    """A digit string (3-6 digits spoken as words) or a short sentence (3-5 common words)."""
    if kind == "digits":
        return " ".join(DIGITS[int(d)] for d in rng.integers(0, 10, size=int(rng.integers(3, 7))))
    return " ".join(_WORDS[int(w)] for w in rng.integers(0, len(_WORDS), size=int(rng.integers(3, 6))))


def synth_utterance(
    text: str, rng: np.random.Generator, *, sample_rate: int, noise_snr_db: tuple[float, float] | None
) -> tuple[np.ndarray, dict[str, Any]]:
    """One utterance of ``text`` in a random voice, rate and pitch, with optional white noise."""
    engine = espeak()
    variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
    voice = f"en+{variant}" if variant else "en"
    rate = int(rng.integers(130, 230))
    pitch = int(rng.integers(20, 80))
    audio = engine.speak(text, voice=voice, rate=rate, pitch=pitch)
    if engine.sample_rate != sample_rate:
        from .audio import resample

        audio = resample(audio, engine.sample_rate, sample_rate)
    info: dict[str, Any] = {"voice": voice, "rate": rate, "pitch": pitch}
    if noise_snr_db is not None and audio.size:
        snr = float(rng.uniform(*noise_snr_db))
        power = float(np.mean(audio**2)) + 1e-12
        noise = rng.standard_normal(audio.size).astype(np.float32) * np.sqrt(power / 10 ** (snr / 10))
        audio = audio + noise
        info["snr_db"] = round(snr, 2)
    return audio.astype(np.float32), info
