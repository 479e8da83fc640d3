"""Loaders on fixtures in the real layouts, clear data errors, front-end parity, decoding, WER."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from kdtool_asr.audio import make_frontend, read_audio
from kdtool_asr.data import AsrDataset, CharTokenizer, collate, jsonl_manifest, librispeech
from kdtool_asr.decoding import DecoderInfo, beam_search, edit_distance, error_rates, greedy_search

from kdtool.errors import DataError


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_librispeech(root: Path) -> Path:
    """root/SPEAKER/CHAPTER/SPEAKER-CHAPTER-UTT.flac + SPEAKER-CHAPTER.trans.txt (16 kHz)."""
    for speaker, chapter, texts in (
        ("19", "198", ["HELLO WORLD", "IT'S A TEST"]),
        ("26", "495", ["ONE TWO"]),
    ):
        folder = root / speaker / chapter
        folder.mkdir(parents=True)
        lines = []
        for i, text in enumerate(texts):
            utt = f"{speaker}-{chapter}-{i:04d}"
            sf.write(folder / f"{utt}.flac", _tone(0.5 + 0.1 * i, 16000, 300 + 50 * i), 16000)
            lines.append(f"{utt} {text}")
        (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_loader(tmp_path: Path) -> None:
    items = librispeech(write_librispeech(tmp_path / "train-clean"))
    assert [u.text for u in items] == ["hello world", "it's a test", "one two"]
    assert items[0].path is not None and items[0].path.name == "19-198-0000.flac"
    tok = CharTokenizer.from_texts([u.text for u in items])
    ds = AsrDataset(items, tok, features={}, augment=None, seed=0)
    item = ds[1]
    assert item["features"].shape == (int(0.6 * 16000) // 160, 80)  # fbank, snip_edges false
    assert tok.decode(item["targets"].tolist()) == "it's a test"


def test_librispeech_empty_transcript_names_file_and_line(tmp_path: Path) -> None:
    root = write_librispeech(tmp_path / "ls")
    trans = root / "19" / "198" / "19-198.trans.txt"
    trans.write_text("19-198-0000 HELLO WORLD\n19-198-0001\n")
    with pytest.raises(DataError, match=r"19-198\.trans\.txt:2: .*empty transcript"):
        librispeech(root)


def test_jsonl_manifest_and_resampling(tmp_path: Path) -> None:
    sf.write(tmp_path / "a.wav", _tone(1.0, 8000), 8000)  # resampled to 16 kHz
    sf.write(tmp_path / "b.flac", _tone(0.5, 16000), 16000)
    rows = [
        {"audio": "a.wav", "text": "Hello There", "duration": 1.0},
        {"audio": str(tmp_path / "b.flac"), "text": "x", "duration": 0.5},
    ]
    manifest = tmp_path / "train.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    items = jsonl_manifest(manifest)
    assert [u.text for u in items] == ["hello there", "x"]
    assert read_audio(items[0].path).shape[0] == 16000  # type: ignore[arg-type]
    assert len(jsonl_manifest(manifest, max_duration=0.7)) == 1


def test_manifest_errors_name_file_and_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"audio": "a.wav", "text": "ok"}\n{"audio": "b.wav", "text": "  "}\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: empty or missing 'text' for b\.wav"):
        jsonl_manifest(manifest)
    manifest.write_text('{"audio": "a.wav", "text": "ok"}\nnot json\n')
    with pytest.raises(DataError, match=r"m\.jsonl:2: not valid JSON"):
        jsonl_manifest(manifest)


def test_unreadable_audio_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "broken.flac"
    bad.write_bytes(b"this is not audio")
    with pytest.raises(DataError, match="broken.flac"):
        read_audio(bad)


def test_predict_front_end_matches_training_front_end(tmp_path: Path) -> None:
    sf.write(tmp_path / "u.wav", _tone(0.8, 22050, 500), 22050)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio": "u.wav", "text": "ab"}) + "\n")
    items = jsonl_manifest(tmp_path / "m.jsonl")
    ds = AsrDataset(items, CharTokenizer.from_texts(["ab"]), features={}, augment=None, seed=0)
    frontend = make_frontend({})
    direct = frontend(read_audio(tmp_path / "u.wav"))
    assert torch.equal(ds[0]["features"], direct)


def test_collate_pads_with_blank() -> None:
    items = [
        {"index": 0, "features": torch.ones(5, 80), "targets": torch.tensor([3, 4]), "text": "x"},
        {"index": 1, "features": torch.ones(3, 80), "targets": torch.tensor([5]), "text": "y"},
    ]
    b = collate(items)
    assert b["features"].shape == (2, 5, 80) and b["features"][1, 3:].abs().sum() == 0
    assert b["targets"].tolist() == [[3, 4], [5, 0]] and b["feature_lengths"].tolist() == [5, 3]


# --------------------------------------------------------------------------- decoding


def _hand_made(v: int = 4):
    """Decoder: output = one-hot of the last context token. Joiner: logits = enc + 10 * dec
    shifted so that after emitting token k the next best is blank."""

    def decoder(context: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return (torch.nn.functional.one_hot(context[:, -1], v).float(),)

    def joiner(enc: torch.Tensor, dec: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # the frame's own label wins unless it was just emitted (then blank wins)
        logits = enc.clone()
        logits[:, 0] = (enc * dec).sum(-1) * 2.0 + 0.5
        return (logits,)

    return decoder, joiner


def test_greedy_transducer_on_hand_made_joiner() -> None:
    decoder, joiner = _hand_made()
    info = DecoderInfo(blank=0, context_size=2, kind="stateless")
    # frames prefer labels 1, 1, 2, 3 (one-hot); after emitting k, blank wins on a frame that prefers k
    enc = torch.tensor([[[0, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1.0]]])
    hyps = greedy_search(enc, torch.tensor([4]), decoder, joiner, info)
    assert hyps == [[1, 2, 3]]
    # batched, with a shorter second utterance
    enc2 = torch.cat([enc, torch.tensor([[[0, 0, 0, 1.0], [0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0]]])])
    assert greedy_search(enc2, torch.tensor([4, 2]), decoder, joiner, info) == [[1, 2, 3], [3, 2]]
    assert beam_search(enc, 4, decoder, joiner, info, beam=3) == [1, 2, 3]


def test_wer_cer() -> None:
    assert edit_distance("a b c".split(), "a c d".split()) == 2
    rates = error_rates(["one two three", "four"], ["one too three", "four five"])
    assert rates["wer"] == pytest.approx(2 / 4)
    assert rates["cer"] == pytest.approx((1 + 5) / (13 + 4))
