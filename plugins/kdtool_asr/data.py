"""ASR data: the embedded eSpeak NG set, LibriSpeech layout, JSONL manifests; tokenizer; batches.

Every source yields :class:`Utterance` records (audio path or in-memory samples, text).
Transcripts are normalised to lower case; the character vocabulary is ``<blank>`` (id 0)
plus the sorted characters of the training transcripts (LibriSpeech: a-z, space, apostrophe).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.errors import DataError

from .audio import make_frontend, min_samples, read_audio

BLANK = "<blank>"


@dataclass
class Utterance:
    text: str
    path: Path | None = None
    audio: np.ndarray | None = None
    duration: float | None = None
    info: dict[str, Any] = field(default_factory=dict)


def normalize_text(text: str) -> str:
    return " ".join(text.lower().split())


class CharTokenizer:
    """Characters; id 0 is the blank."""

    def __init__(self, vocabulary: list[str]) -> None:
        if not vocabulary or vocabulary[0] != BLANK:
            raise ValueError(f"vocabulary must start with {BLANK!r}")
        self.vocabulary = list(vocabulary)
        self.ids = {c: i for i, c in enumerate(self.vocabulary)}

    @classmethod
    def from_texts(cls, texts: list[str], base: str = "") -> CharTokenizer:
        """``<blank>`` + the sorted characters of ``texts`` and ``base``."""
        return cls([BLANK, *sorted({c for t in texts for c in t} | set(base))])

    def encode(self, text: str, *, where: str = "", strict: bool = True) -> list[int]:
        """Ids of ``text``; unknown characters are an error (``strict``) or dropped (references
        of a validation set only need the text)."""
        if not strict:
            return [self.ids[c] for c in text if c in self.ids]
        try:
            return [self.ids[c] for c in text]
        except KeyError as exc:
            raise DataError(f"{where}: character {exc.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: list[int]) -> str:
        return "".join(self.vocabulary[i] for i in ids if 0 < i < len(self.vocabulary))


# --------------------------------------------------------------------------- sources


def librispeech(root: Path, max_duration: float | None = None) -> list[Utterance]:
    """``root/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac`` with ``SPEAKER-CHAPTER.trans.txt``."""
    if not root.is_dir():
        raise DataError(f"LibriSpeech root {root} is not a directory")
    out: list[Utterance] = []
    transcripts = sorted(root.glob("*/*/*.trans.txt"))
    if not transcripts:
        raise DataError(f"no SPEAKER/CHAPTER/*.trans.txt files under {root} (LibriSpeech layout expected)")
    for trans in transcripts:
        for lineno, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            utt_id, _, text = line.strip().partition(" ")
            text = normalize_text(text)
            if not text:
                raise DataError(f"{trans}:{lineno}: utterance {utt_id!r} has an empty transcript")
            audio = trans.parent / f"{utt_id}.flac"
            if not audio.exists():
                raise DataError(f"{trans}:{lineno}: audio file {audio} not found")
            out.append(Utterance(text=text, path=audio))
    return _filter_duration(out, max_duration)


def jsonl_manifest(path: Path, max_duration: float | None = None) -> list[Utterance]:
    """One JSON object a line: ``{"audio": PATH, "text": STR, "duration": SECONDS}``
    (``audio_filepath`` is accepted too; relative paths are relative to the manifest)."""
    if not path.is_file():
        raise DataError(f"manifest {path} not found")
    out: list[Utterance] = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        audio = row.get("audio", row.get("audio_filepath"))
        if not isinstance(audio, str) or not audio:
            raise DataError(f"{path}:{lineno}: missing 'audio' (the audio file path)")
        text = row.get("text")
        if not isinstance(text, str) or not normalize_text(text):
            raise DataError(f"{path}:{lineno}: empty or missing 'text' for {audio}")
        duration = row.get("duration")
        if duration is not None and not isinstance(duration, int | float):
            raise DataError(f"{path}:{lineno}: 'duration' must be a number of seconds")
        audio_path = Path(audio) if Path(audio).is_absolute() else path.parent / audio
        out.append(Utterance(text=normalize_text(text), path=audio_path, duration=duration))
    if not out:
        raise DataError(f"manifest {path} has no utterances")
    return _filter_duration(out, max_duration)


def _filter_duration(items: list[Utterance], max_duration: float | None) -> list[Utterance]:
    if max_duration is None:
        return items
    return [u for u in items if u.duration is None or u.duration <= max_duration]


def espeak_set(
    *,
    count: int,
    seed: int,
    kinds: list[str],
    noise_snr_db: tuple[float, float] | None,
    cache_dir: Path,
    sample_rate: int = 16000,
) -> list[Utterance]:
    """``count`` synthetic utterances, cached under ``cache_dir`` keyed by the settings."""
    from . import synth

    key = json.dumps(
        {"count": count, "seed": seed, "kinds": kinds, "noise": noise_snr_db, "sr": sample_rate, "v": 1},
        sort_keys=True,
    )
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    path = cache_dir / "asr_espeak" / f"{digest}.npz"
    if path.exists():
        try:
            blob = np.load(path, allow_pickle=False)
            texts = json.loads(str(blob["texts"]))
            offsets = blob["offsets"]
            audio = blob["audio"]
            return [Utterance(text=t, audio=audio[offsets[i] : offsets[i + 1]]) for i, t in enumerate(texts)]
        except (OSError, KeyError, ValueError):
            path.unlink(missing_ok=True)  # a broken cache is regenerated
    try:
        synth.espeak()
    except (ModuleNotFoundError, OSError, RuntimeError) as exc:
        raise DataError(
            f"the default data source 'espeak' needs eSpeak NG ({exc}); install it with {synth.INSTALL_HINT}, "
            "or set data.source to librispeech or manifest"
        ) from None
    rng = np.random.default_rng(seed)
    items: list[Utterance] = []
    for i in range(count):
        text = synth.make_text(rng, kinds[i % len(kinds)])
        audio, info = synth.synth_utterance(text, rng, sample_rate=sample_rate, noise_snr_db=noise_snr_db)
        items.append(Utterance(text=text, audio=audio, info=info))
    offsets = np.cumsum([0] + [u.audio.size for u in items if u.audio is not None])
    from kdtool.io import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(
                fh,
                audio=np.concatenate([u.audio for u in items if u.audio is not None]),
                offsets=offsets,
                texts=np.array(json.dumps([u.text for u in items])),
            )
    return items


# --------------------------------------------------------------------------- dataset


@dataclass
class SpecAugment:
    """Frequency and time masking (Park et al. 2019), masked with the utterance's mean."""

    freq_masks: int = 2
    freq_width: int = 15
    time_masks: int = 2
    time_width: float = 0.05  # fraction of the utterance, at most max_time_width frames
    max_time_width: int = 20

    def __call__(self, feats: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        out = feats.clone()
        frames, bins = out.shape
        fill = out.mean()
        for _ in range(self.freq_masks):
            w = int(rng.integers(0, self.freq_width + 1))
            f0 = int(rng.integers(0, max(1, bins - w)))
            out[:, f0 : f0 + w] = fill
        tw = min(self.max_time_width, int(self.time_width * frames))
        for _ in range(self.time_masks):
            w = int(rng.integers(0, tw + 1))
            t0 = int(rng.integers(0, max(1, frames - w)))
            out[t0 : t0 + w] = fill
        return out


class AsrDataset(Dataset[dict[str, Any]]):
    """Utterances -> {"index", "features" (T, mels), "targets" (U,), "text"}.

    Features (:func:`kdtool_asr.audio.make_frontend`) are computed once per utterance and kept in memory (``cache_features``);
    SpecAugment draws from ``sample_rng(seed, epoch, index)``.
    """

    def __init__(
        self,
        items: list[Utterance],
        tokenizer: CharTokenizer,
        *,
        features: dict[str, Any],
        augment: SpecAugment | None,
        seed: int,
        cache_features: bool = True,
        strict: bool = True,
    ) -> None:
        self.items = items
        self.tokenizer = tokenizer
        self.frontend = make_frontend(features)
        self.settings: dict[str, Any] = self.frontend.settings  # type: ignore[attr-defined]
        self.sample_rate = int(self.settings["sample_rate"])
        self.min_samples = min_samples(self.settings)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.cache_features = cache_features
        self.strict = strict
        self._feats: dict[int, torch.Tensor] = {}

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.items)

    def features(self, index: int) -> torch.Tensor:
        if index in self._feats:
            return self._feats[index]
        u = self.items[index]
        if u.audio is not None:
            wave = u.audio
        else:
            assert u.path is not None
            wave = read_audio(u.path, self.sample_rate)
        if wave.size < max(self.min_samples, self.sample_rate // 100):
            raise DataError(
                f"audio {u.path or f'utterance {index}'} has {wave.size} samples, shorter than 10 ms "
                f"(the front end needs at least {self.min_samples} samples for one frame)"
            )
        feats = self.frontend(np.ascontiguousarray(wave, dtype=np.float32))
        if self.cache_features:
            self._feats[index] = feats
        return feats

    def __getitem__(self, index: int) -> dict[str, Any]:
        u = self.items[index]
        feats = self.features(index)
        if self.augment is not None:
            feats = self.augment(feats, sample_rng(self.seed, self.epoch, index))
        where = str(u.path) if u.path else f"utterance {index}"
        targets = torch.tensor(
            self.tokenizer.encode(u.text, where=where, strict=self.strict), dtype=torch.long
        )
        return {"index": index, "features": feats, "targets": targets, "text": u.text}


def collate(items: list[dict[str, Any]], blank: int = 0) -> dict[str, Any]:
    """Pad features with zeros and targets with the blank id."""
    n = len(items)
    frames = max(it["features"].shape[0] for it in items)
    bins = items[0]["features"].shape[1]
    labels = max(1, max(it["targets"].numel() for it in items))
    feats = torch.zeros(n, frames, bins)
    targets = torch.full((n, labels), blank, dtype=torch.long)
    for i, it in enumerate(items):
        feats[i, : it["features"].shape[0]] = it["features"]
        targets[i, : it["targets"].numel()] = it["targets"]
    return {
        "index": torch.tensor([it["index"] for it in items]),
        "features": feats,
        "feature_lengths": torch.tensor([it["features"].shape[0] for it in items]),
        "targets": targets,
        "target_lengths": torch.tensor([it["targets"].numel() for it in items]),
    }


def length_buckets(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (sorted, then chunked): used for
    evaluation here; training batches come from the engine's sampler."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
