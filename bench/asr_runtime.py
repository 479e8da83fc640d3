"""ASR runtimes side by side: real-time factor and per-utterance latency of PyTorch eager
greedy decoding, kdtool's ONNX Runtime Python loop and sherpa-onnx (1 and 2 threads), FP32
and INT8, on the same model and the same validation clips, in one process.

Every variant goes from the waveform to text: kdtool's rows compute the fbank features with
kaldi-native-fbank, run the encoder and the greedy search; sherpa-onnx does all three in C++.
All variants use greedy search with at most 3 symbols per 40 ms encoder frame (sherpa-onnx
emits one per frame, on an encoder that repeats each frame 3 times), so their transcripts
can be compared word for word. The ONNX Runtime rows run the very graph
files of the sherpa-onnx exports. Two decoding loops are timed for kdtool: ``frame loop``
(one joiner call per frame, one decoder call per symbol) and ``fast loop`` (joiner over
blocks of 8 frames, decoder outputs cached by context; ``greedy_search_one``).

Measurements are interleaved (each repeat runs every variant over all clips) so that load on
a shared machine hits all variants alike; latency per clip is the median over repeats.

    python bench/asr_runtime.py [--run RUN] [--clips 40] [--repeats 3] [--out bench/results/asr_runtime.json]

Without ``--run`` it uses ``runs/asr_supernet/latest`` and with ``--train`` trains the
default recipe first when there is none.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def _export(run: Path, target: str) -> Path:
    from kdtool.export.driver import ExportRequest, export_model

    folder = run / "exports" / target
    if not (folder / "manifest.json").exists():
        export_model(ExportRequest(run=run, target=target, eval_limit=40), echo=print)
    return folder


def _ort_runner(directory: Path, threads: int) -> Any:
    """kdtool's ONNX Runtime runner over the graph files of an export, at ``threads``."""
    from kdtool_onnx.exporter import OnnxExporter, OnnxOptions

    manifest = json.loads((directory / "manifest.json").read_text())
    options = {k: v for k, v in manifest["options"].items() if k in OnnxOptions.model_fields}
    options["threads"] = threads
    return OnnxExporter().load(directory, {**manifest, "options": options})


def _size(directory: Path) -> int:
    return sum((directory / f"{g}.onnx").stat().st_size for g in ("encoder", "decoder", "joiner"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None)
    parser.add_argument("--train", action="store_true", help="train the default recipe if there is no run")
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "asr_runtime.json")
    args = parser.parse_args()

    from kdtool_asr.audio import make_frontend
    from kdtool_asr.decoding import DecoderInfo, error_rates, greedy_search_batched, greedy_search_one
    from kdtool_asr.sherpa import SherpaOptions, load_recognizer

    from kdtool.run import Run
    from kdtool.task import Predictor

    run_path = args.run or REPO / "runs" / "asr_supernet" / "latest"
    if not (run_path / "summary.json").exists():
        if not args.train:
            sys.exit(f"no run at {run_path}: pass --run RUN or --train")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "kdtool",
                "distill",
                str(REPO / "recipes" / "asr_supernet.yaml"),
                "--no-progress",
            ],
            check=True,
        )
    torch.set_num_threads(1)
    ctx = Run.open(run_path)
    run = ctx.run_dir
    name = ctx.model_name(None)
    spec = ctx.export_spec(name)
    meta = spec.metadata.to_dict()
    info = DecoderInfo.from_metadata(meta)
    vocab: list[str] = meta["vocabulary"]
    features = meta["preprocessing"]["features"]
    frontend = make_frontend(features)
    rate = int(features["sample_rate"])
    fp32_dir, int8_dir = _export(run, "sherpa-onnx"), _export(run, "sherpa-onnx-int8")

    dataset = ctx.task.build_dataset("val")
    n = min(args.clips, len(dataset))  # type: ignore[arg-type]
    waves = [dataset.waveform(i) for i in range(n)]  # type: ignore[attr-defined]
    refs = [dataset.items[i].text for i in range(n)]  # type: ignore[attr-defined]
    durations = [w.size / rate for w in waves]

    def kdtool_variant(predictor: Predictor, fast: bool) -> Callable[[np.ndarray], str]:
        encoder, decoder, joiner = (predictor.graphs[g] for g in ("encoder", "decoder", "joiner"))
        # the sherpa-onnx exports repeat each encoder frame 3x and decode one symbol per frame,
        # which equals 3 symbols per frame on the PyTorch model
        post = predictor.metadata.get("postprocessing", {})
        symbols = 1 if post.get("frame_repeat") else int(post.get("max_symbols_per_frame", 3))

        def transcribe(wave: np.ndarray) -> str:
            feats = frontend(wave)[None]
            enc, lens = encoder(feats, torch.tensor([feats.shape[1]]))[:2]
            if fast:
                tokens = greedy_search_one(enc[0], int(lens[0]), decoder, joiner, info, symbols)
            else:
                tokens = greedy_search_batched(enc, lens, decoder, joiner, info, symbols)[0]
            return "".join(vocab[t] for t in tokens if 0 < t < len(vocab))

        return transcribe

    def sherpa_variant(directory: Path, threads: int) -> Callable[[np.ndarray], str]:
        runner = load_recognizer(directory, meta, SherpaOptions(num_threads=threads))
        return lambda wave: runner.recognize([wave])[0]

    eager = Predictor.from_spec(spec)
    ort32, ort8 = _ort_runner(fp32_dir, 1), _ort_runner(int8_dir, 1)
    weights = run / ctx.summary["models"][name]["weights"]
    variants: list[tuple[str, str, str, int, int, Callable[[np.ndarray], str]]] = [
        (
            "pytorch eager, frame loop",
            "pytorch",
            "fp32",
            1,
            weights.stat().st_size,
            kdtool_variant(eager, False),
        ),
        (
            "pytorch eager, fast loop",
            "pytorch",
            "fp32",
            1,
            weights.stat().st_size,
            kdtool_variant(eager, True),
        ),
        (
            "kdtool ORT loop, frame loop",
            "onnxruntime",
            "fp32",
            1,
            _size(fp32_dir),
            kdtool_variant(ort32, False),
        ),
        (
            "kdtool ORT loop, fast loop",
            "onnxruntime",
            "fp32",
            1,
            _size(fp32_dir),
            kdtool_variant(ort32, True),
        ),
        ("kdtool ORT loop, fast loop", "onnxruntime", "int8", 1, _size(int8_dir), kdtool_variant(ort8, True)),
        ("sherpa-onnx", "sherpa-onnx", "fp32", 1, _size(fp32_dir), sherpa_variant(fp32_dir, 1)),
        ("sherpa-onnx", "sherpa-onnx", "fp32", 2, _size(fp32_dir), sherpa_variant(fp32_dir, 2)),
        ("sherpa-onnx", "sherpa-onnx", "int8", 1, _size(int8_dir), sherpa_variant(int8_dir, 1)),
        ("sherpa-onnx", "sherpa-onnx", "int8", 2, _size(int8_dir), sherpa_variant(int8_dir, 2)),
    ]
    times = np.zeros((len(variants), args.repeats, n))
    texts: list[list[str]] = [[] for _ in variants]
    for v, (*_, fn) in enumerate(variants):  # warm-up, and the transcripts
        texts[v] = [fn(w) for w in waves]
    for r in range(args.repeats):
        for v, (*_, fn) in enumerate(variants):
            for i, w in enumerate(waves):
                start = time.perf_counter()
                fn(w)
                times[v, r, i] = time.perf_counter() - start
    per_clip = np.median(times, axis=1)  # (variants, clips)
    total_audio = float(sum(durations))
    reference = texts[5]  # sherpa-onnx FP32, 1 thread
    base = float(per_clip[0].sum())
    rows = []
    for v, (label, runtime, precision, threads, size, _) in enumerate(variants):
        rates = error_rates(refs, texts[v])
        rows.append(
            {
                "variant": label,
                "runtime": runtime,
                "precision": precision,
                "threads": threads,
                "rtf": float(per_clip[v].sum()) / total_audio,
                "latency_ms_p50": 1000 * float(np.percentile(per_clip[v], 50)),
                "latency_ms_p90": 1000 * float(np.percentile(per_clip[v], 90)),
                "speedup_vs_eager_frame_loop": base / float(per_clip[v].sum()),
                "size_bytes": size,
                "wer": rates["wer"],
                "cer": rates["cer"],
                "same_transcripts_as_sherpa_fp32": sum(
                    a == b for a, b in zip(texts[v], reference, strict=True)
                ),
            }
        )
    header = f"{'variant':30} {'prec':5} {'thr':>3} {'RTF':>8} {'p50 ms':>8} {'p90 ms':>8} {'x eager':>8} {'size KB':>8} {'WER':>6} {'=sherpa':>8}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(
            f"{row['variant']:30} {row['precision']:5} {row['threads']:>3} {row['rtf']:8.4f} "
            f"{row['latency_ms_p50']:8.2f} {row['latency_ms_p90']:8.2f} {row['speedup_vs_eager_frame_loop']:8.2f} "
            f"{row['size_bytes'] / 1024:8.0f} {row['wer']:6.3f} {row['same_transcripts_as_sherpa_fp32']:>5}/{n}"
        )
    result = {
        "what": "ASR waveform-to-text per utterance: PyTorch eager vs kdtool's ORT loop vs sherpa-onnx",
        "run": str(run),
        "model": name,
        "clips": n,
        "audio_seconds": total_audio,
        "repeats": args.repeats,
        "decoding": "greedy, at most 3 symbols per 40 ms frame, batch 1",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
            "note": "shared 2-core machine (other jobs running); 2-thread rows contend with them",
        },
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "rows": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
