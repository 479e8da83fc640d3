"""Exporter ``sherpa`` (targets ``sherpa-onnx``, ``sherpa-onnx-int8``): a directory that
sherpa-onnx's offline transducer recogniser loads as it is, and a runner that decodes through
sherpa-onnx, so ``kdtool predict``, ``kdtool eval`` and ``kdtool bench`` on such an export
run sherpa-onnx itself (optional extra ``kdtool[sherpa]``, the PyPI package ``sherpa-onnx``).

What sherpa-onnx reads (``sherpa-onnx/csrc/offline-transducer-model.cc``,
``offline-recognizer-transducer-impl.h``, ``offline-transducer-greedy-search-decoder.cc``):

- ``encoder.onnx``: ``x`` (N, T, 80) float32 fbank, ``x_lens`` (N,) int64 ->
  ``encoder_out`` (N, T', J), ``encoder_out_lens`` (N,) int64. Inputs and outputs are taken
  by position; the names are icefall's. Metadata ``model_type`` selects the recogniser when
  the caller does not pass ``--model-type=transducer``: the offline loader accepts
  ``conformer``, ``zipformer`` and ``zipformer2`` and treats them alike, so it is written as
  ``conformer`` (the encoder is kdtool's S4D, ``kdtool_encoder: s4d``).
- ``decoder.onnx``: ``y`` (N, context_size) int64 -> ``decoder_out`` (N, J); metadata
  ``vocab_size`` and ``context_size`` (required by the loader).
- ``joiner.onnx``: ``encoder_out`` (N, J), ``decoder_out`` (N, J) -> ``logit`` (N, V).
- ``tokens.txt``: ``symbol id`` a line, ``<blk> 0`` first (sherpa-onnx hard-codes the blank
  to id 0). The space character is written ``▁`` (U+2581), which sherpa-onnx turns back into
  a space, as it does for BPE pieces.

sherpa-onnx computes the features itself with kaldi-native-fbank and its fixed
``FeatureExtractorConfig`` (only sample rate, bins and dither are settings), so only a model
trained on kdtool's default fbank exports; a log-mel model or changed fbank settings are an
ExportError. Its greedy search emits at most one symbol per encoder frame and starts from the
context ``[-1, ..., -1, 0]``; the decoder graph reads negative ids as the blank, and the
encoder repeats each output frame ``max_symbols_per_frame`` times (:class:`RepeatFrames`,
option ``symbols_per_frame``), so its transcripts equal kdtool's greedy search with the
task's ``max_symbols_per_frame`` (3 by default; tested).

Prediction network: sherpa-onnx's offline transducer feeds the decoder only the last
``context_size`` tokens (a stateless decoder, icefall's design and kdtool's default). An LSTM
prediction network carries state between symbols, which that interface cannot pass: such a
model is refused with an ExportError (export it with ``--target onnx``; kdtool's own decoding
loop carries the state).

Length: the S4D encoder is exported with a fixed-length convolution kernel, so it accepts at
most ``max_frames`` feature frames (``data.max_duration`` of the recipe, 20 s by default).
``kdtool predict`` checks this before decoding; the README in the export says it.

Streaming (not implemented): sherpa-onnx's online transducer (``online-transducer-model.cc``)
calls the encoder on chunks of ``T = decode_chunk_len + pad_length`` frames with the
encoder's caches as extra inputs and outputs (``x``, ``cached_*`` -> ``encoder_out``,
``new_cached_*``), metadata naming ``model_type`` (``zipformer2``, ``conformer``, ``lstm``...)
with ``decode_chunk_len``, ``T`` and each cache's shape. This encoder would need: (1) its S4D
layers run as the diagonal recurrence x_k = exp(dt A) x_(k-1) + B u_k, carrying each channel's
state_size / 2 complex modes (d x state_size reals per layer) across chunks, instead of the
convolution over the whole utterance (a cache of the last ``kernel_frames`` inputs per layer
would also work, at far more memory and compute);
(2) the two stride-2 front convolutions (kernel 3, padding 1) made causal with a left cache of
their last input frames; (3) the layer norms and feed-forwards are per-frame and need
nothing; (4) training with chunked, causal masking so the model does not rely on the
non-causal front padding. The export would then be one of sherpa-onnx's online layouts
(zipformer2's named caches are the closest).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from kdtool_onnx.exporter import OnnxExporter, OnnxOptions
from pydantic import Field
from torch import nn

from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    ExporterOptions,
    StandIn,
)
from kdtool.export.onnx_utils import load_onnx_runner, set_onnx_metadata
from kdtool.export.spec import DynamicAxis, ExportSpec
from kdtool.export.targets import TargetProfile
from kdtool.io import write_text

from .audio import FBANK_DEFAULTS, resolve_features

SPACE = "\u2581"  # sherpa-onnx turns a leading U+2581 of a symbol into a space
INSTALL = "pip install 'kdtool[sherpa]' (the PyPI package sherpa-onnx)"
# fbank settings sherpa-onnx's Python API and command line can set; every other one is fixed
SETTABLE = {"sample_rate", "num_mel_bins", "dither"}


class SherpaOptions(OnnxOptions):
    """The ``onnx`` exporter's options plus how kdtool runs the artifact through sherpa-onnx."""

    decoding_method: Literal["greedy_search", "modified_beam_search"] = "greedy_search"
    max_active_paths: int = Field(default=4, ge=1, description="beam for modified_beam_search")
    num_threads: int = Field(default=1, ge=1, description="sherpa-onnx threads when kdtool runs it")
    batch: int = Field(
        default=1,
        ge=1,
        description=(
            "utterances per decode_streams call in kdtool eval (1: each alone, as an app decodes; with "
            "dynamic INT8 a batch shares activation scales, so results depend on what is batched together)"
        ),
    )
    symbols_per_frame: int = Field(
        default=0,
        ge=0,
        le=8,
        description=(
            "repeat each encoder frame this many times, so that sherpa-onnx's one-symbol-per-frame search "
            "emits up to this many symbols per frame (0: the task's max_symbols_per_frame)"
        ),
    )


class RepeatFrames(nn.Module):
    """The encoder with every output frame repeated ``repeat`` times (and lengths scaled).

    sherpa-onnx's greedy search emits at most one symbol per encoder frame, then moves on;
    kdtool's emits up to ``max_symbols_per_frame`` on the same frame, re-running the joiner
    with the updated decoder output. On ``repeat`` copies of a frame sherpa-onnx does exactly
    that: a copy that yields blank yields blank on the remaining copies too (same inputs), so
    the transcripts equal kdtool's greedy search with ``max_symbols_per_frame = repeat``. A
    character model at 4x subsampling (25 frames/s) often needs more than one symbol a frame:
    on the default recipe's model, one symbol a frame more than triples the WER."""

    def __init__(self, encoder: nn.Module, repeat: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.repeat = repeat

    def forward(self, x: torch.Tensor, x_lens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, lens = self.encoder(x, x_lens)
        b, t, j = out.shape
        out = out.unsqueeze(2).expand(b, t, self.repeat, j).reshape(b, t * self.repeat, j)
        return out, lens * self.repeat


def sherpa_available() -> bool:
    return importlib.util.find_spec("sherpa_onnx") is not None


class SherpaExporter(OnnxExporter):
    """The ONNX exporter's three transducer graphs, laid out and annotated for sherpa-onnx."""

    capabilities = Capabilities(
        name="sherpa",
        suffix=".onnx",
        precisions=("fp32", "int8"),
        options_model=SherpaOptions,
        default_profile="sherpa-onnx",
        description="sherpa-onnx offline transducer directory (encoder/decoder/joiner.onnx + tokens.txt)",
        requires=(("onnx", "pip install onnx"), ("onnxruntime", "pip install onnxruntime")),
        tasks=("asr_supernet",),
    )

    # ------------------------------------------------------------ export

    def export(
        self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext
    ) -> Artifact:
        assert isinstance(options, SherpaOptions)
        meta = spec.metadata.to_dict()
        check_exportable(spec.task, meta)
        # sherpa-onnx's greedy search emits at most one symbol per frame: the encoder repeats
        # its frames instead (RepeatFrames); the spec (which the driver also verifies against
        # and writes into the manifest) is adapted in place, so kdtool's own loop over these
        # graphs decodes with one symbol per (repeated) frame too
        post_in = spec.metadata.postprocessing
        repeat = options.symbols_per_frame or int(post_in.get("max_symbols_per_frame", 1))
        if repeat > 1 and not post_in.get("frame_repeat"):
            graph = spec.graph("encoder")
            graph.module = RepeatFrames(graph.module, repeat).eval()
            if "frames" in graph.dynamic_axes:
                a = graph.dynamic_axes["frames"]
                graph.dynamic_axes["frames"] = DynamicAxis(a.min * repeat, a.opt * repeat, a.max * repeat)
            post_in["frame_repeat"] = repeat
        post_in["max_symbols_per_frame"] = 1
        meta = spec.metadata.to_dict()
        artifact = super().export(spec, options, out_dir, ctx)
        post = meta["postprocessing"]
        vocab: list[str] = list(meta["vocabulary"])
        features = resolve_features(meta["preprocessing"]["features"], default_kind="logmel")
        joiner_dim = int(spec.graph("joiner").inputs[0].shape[-1])
        max_frames = int(meta["preprocessing"].get("max_frames", 0))
        common = {"model_author": "kdtool", "version": "1"}
        set_metadata(
            artifact.graph_files["encoder"],
            {
                **common,
                "model_type": "conformer",
                "kdtool_encoder": "s4d",
                "subsampling_factor": str(post.get("subsampling", 4)),
                "max_frames": str(max_frames),
                "comment": "kdtool S4D transducer encoder; offline only (see README.md)",
            },
        )
        set_metadata(
            artifact.graph_files["decoder"],
            {**common, "vocab_size": str(len(vocab)), "context_size": str(int(post["context_size"]))},
        )
        set_metadata(artifact.graph_files["joiner"], {**common, "joiner_dim": str(joiner_dim)})
        tokens = out_dir / "tokens.txt"
        write_text(tokens, tokens_txt(vocab))
        readme = out_dir / "README.md"
        write_text(readme, readme_text(spec, meta, features, options, max_frames))
        script = out_dir / "decode.py"
        write_text(
            script,
            DECODE_SCRIPT.format(rate=int(features["sample_rate"]), bins=int(features["num_mel_bins"])),
        )
        artifact.extra_files += [tokens, readme, script]
        artifact.details["sherpa_onnx"] = {
            "layout": "offline transducer (icefall names)",
            "model_type": "conformer",
            "vocab_size": len(vocab),
            "context_size": int(post["context_size"]),
            "blank": 0,
            "features": {k: features[k] for k in ("sample_rate", "num_mel_bins", "dither")},
            "max_frames": max_frames,
            "max_symbols_per_frame": 1,
            "frame_repeat": int(post.get("frame_repeat", 1)),
        }
        if not sherpa_available():
            artifact.not_verified.append(f"decoding through sherpa-onnx: not installed here ({INSTALL})")
        return artifact

    # ------------------------------------------------------------ load / run

    def can_run_here(self, options: ExporterOptions) -> tuple[bool, str]:
        if not sherpa_available():
            return False, f"sherpa-onnx is not installed ({INSTALL})"
        return True, ""

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        options = SherpaOptions.model_validate(manifest.get("options", {}))
        return load_recognizer(directory, manifest.get("metadata", {}), options)

    def stand_in(self, directory: Path, manifest: dict[str, Any], options: ExporterOptions) -> StandIn | None:
        """sherpa-onnx decodes whole utterances (no per-graph callables), and may be missing:
        the driver compares the three graphs with PyTorch in ONNX Runtime instead."""
        files = {name: directory / info["file"] for name, info in manifest["graphs"].items()}
        return StandIn(
            runner=load_onnx_runner(files, manifest, options=options),
            description="onnxruntime (the encoder, decoder and joiner graphs sherpa-onnx loads)",
            precision=options.precision,
        )

    def versions(self) -> dict[str, str]:
        out = super().versions()
        if sherpa_available():
            import sherpa_onnx

            out["sherpa_onnx"] = str(getattr(sherpa_onnx, "__version__", "unknown"))
        return out


def check_exportable(task: str, meta: dict[str, Any]) -> None:
    """Raise an ExportError saying why a model cannot run in sherpa-onnx's offline transducer."""
    if task != "asr_supernet":
        raise ExportError(f"exporter 'sherpa' exports ASR transducers (task asr_supernet), not task {task!r}")
    post = meta.get("postprocessing", {})
    if post.get("predictor", "stateless") != "stateless":
        raise ExportError(
            "sherpa-onnx's offline transducer feeds the prediction network only the last context_size tokens "
            f"(a stateless decoder); this model's prediction network is {post.get('predictor')!r} and carries state",
            hint="train with models.*.options.predictor: stateless, or export with --target onnx",
        )
    if int(post.get("blank", 0)) != 0:
        raise ExportError(
            f"sherpa-onnx hard-codes the blank to id 0; this model's blank is {post.get('blank')}"
        )
    features = resolve_features(meta.get("preprocessing", {}).get("features"), default_kind="logmel")
    if features["kind"] != "fbank":
        raise ExportError(
            "sherpa-onnx computes Kaldi fbank features itself; this model was trained on log-mel features",
            hint="retrain with data.features.kind: fbank (the default), or export with --target onnx",
        )
    fixed = {k: v for k, v in FBANK_DEFAULTS.items() if k not in SETTABLE}
    changed = {k: features[k] for k, v in fixed.items() if features[k] != v}
    if changed:
        raise ExportError(
            f"sherpa-onnx's fbank settings are fixed except {sorted(SETTABLE)}; this model was trained with {changed}",
            hint="retrain with the default fbank settings, or export with --target onnx",
        )
    vocab = meta.get("vocabulary") or []
    bad = [s for s in vocab[1:] if not s or (s != " " and any(c.isspace() for c in s)) or s.startswith(SPACE)]
    if not vocab or bad:
        raise ExportError(f"the vocabulary cannot be written as sherpa-onnx tokens: {bad[:5] or 'empty'}")


def tokens_txt(vocab: Sequence[str]) -> str:
    """sherpa-onnx's symbol table: ``symbol id`` a line, ``<blk>`` at 0, space as U+2581."""
    lines = ["<blk> 0"]
    for i, symbol in enumerate(vocab[1:], 1):
        lines.append(f"{SPACE if symbol == ' ' else symbol} {i}")
    return "\n".join(lines) + "\n"


def set_metadata(path: Path, props: dict[str, str]) -> None:
    """Add or replace ONNX model metadata entries (what sherpa-onnx's loaders read)."""
    set_onnx_metadata(path, props)


# --------------------------------------------------------------------------- runner


def load_recognizer(directory: Path, metadata: dict[str, Any], options: SherpaOptions) -> SherpaOnnxRunner:
    if not sherpa_available():
        raise ExportError(f"running a sherpa-onnx export needs sherpa-onnx: {INSTALL}")
    import sherpa_onnx

    features = resolve_features(metadata.get("preprocessing", {}).get("features"), default_kind="logmel")
    for name in ("encoder.onnx", "decoder.onnx", "joiner.onnx", "tokens.txt"):
        if not (directory / name).is_file():
            raise ExportError(f"{directory} is not a complete sherpa-onnx export: {name} is missing")
    try:
        recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
            encoder=str(directory / "encoder.onnx"),
            decoder=str(directory / "decoder.onnx"),
            joiner=str(directory / "joiner.onnx"),
            tokens=str(directory / "tokens.txt"),
            num_threads=options.num_threads,
            sample_rate=int(features["sample_rate"]),
            feature_dim=int(features["num_mel_bins"]),
            dither=float(features["dither"]),
            decoding_method=options.decoding_method,
            max_active_paths=options.max_active_paths,
            model_type="transducer",
        )
    except Exception as exc:
        raise ExportError(f"sherpa-onnx cannot load {directory}: {str(exc).splitlines()[0][:300]}") from None
    return SherpaOnnxRunner(
        recognizer, metadata=metadata, sample_rate=int(features["sample_rate"]), batch=options.batch
    )


class SherpaOnnxRunner(ArtifactRunner):
    """An export decoded by sherpa-onnx's OfflineRecognizer: waveforms in, text out.

    It has no per-graph callables (sherpa-onnx runs the graphs and the search itself), so
    tasks call :meth:`recognize`, and ``kdtool bench`` calls :meth:`bench`."""

    def __init__(
        self, recognizer: Any, *, metadata: dict[str, Any], sample_rate: int, batch: int = 1
    ) -> None:
        super().__init__({}, kind="sherpa-onnx", metadata=metadata)
        self.recognizer = recognizer
        self.sample_rate = sample_rate
        self.batch = batch

    def recognize(self, waves: Sequence[np.ndarray]) -> list[str]:
        """Transcripts of mono float32 waveforms at ``sample_rate`` (``decode_streams`` in
        groups of ``batch``)."""
        texts: list[str] = []
        for start in range(0, len(waves), self.batch):
            streams = []
            for wave in waves[start : start + self.batch]:
                stream = self.recognizer.create_stream()
                stream.accept_waveform(self.sample_rate, np.ascontiguousarray(wave, dtype=np.float32))
                streams.append(stream)
            self.recognizer.decode_streams(streams)
            # the recognised symbols joined, as kdtool detokenizes: sherpa-onnx's result.text
            # also drops leading spaces and a space before punctuation (RemoveLeadingSpaces,
            # RemoveSpaceBetweenCjk), which would make CER differ from the other runtimes
            texts += ["".join(s.result.tokens) for s in streams]
        return texts

    def bench(self, *, throughput_batch: int, max_seconds: float = 2.0) -> tuple[float, float, float, int]:
        """(p50 ms, p90 ms, utterances/s, batch): one 4 s utterance decoded end to end
        (features, encoder, greedy search), then ``throughput_batch`` of them per call."""
        from kdtool.export.bench import time_calls

        rng = np.random.default_rng(0)
        t = np.arange(4 * self.sample_rate) / self.sample_rate
        wave = (0.1 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
        times = time_calls(lambda: self.recognize([wave]), max_seconds=max_seconds)
        batch = max(1, throughput_batch)
        many = [wave] * batch
        old, self.batch = self.batch, batch
        try:
            bulk = time_calls(lambda: self.recognize(many), warmup=1, min_calls=3, max_seconds=max_seconds)
        finally:
            self.batch = old
        return (
            float(np.percentile(times, 50)),
            float(np.percentile(times, 90)),
            batch / (float(np.median(bulk)) / 1000),
            batch,
        )


# --------------------------------------------------------------------------- files


DECODE_SCRIPT = '''"""Decode audio files with this sherpa-onnx export: python decode.py FILE [FILE...]

Written by kdtool. Needs `pip install sherpa-onnx soundfile`. sherpa-onnx computes the
features itself and resamples to {rate} Hz; channels are averaged here.
"""

import sys
from pathlib import Path

import sherpa_onnx
import soundfile as sf

here = Path(__file__).resolve().parent
recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
    encoder=str(here / "encoder.onnx"),
    decoder=str(here / "decoder.onnx"),
    joiner=str(here / "joiner.onnx"),
    tokens=str(here / "tokens.txt"),
    num_threads=1,
    sample_rate={rate},
    feature_dim={bins},
    decoding_method="greedy_search",
    model_type="transducer",
)
for path in sys.argv[1:]:
    samples, rate = sf.read(path, dtype="float32", always_2d=True)
    stream = recognizer.create_stream()
    stream.accept_waveform(rate, samples.mean(axis=1))
    recognizer.decode_stream(stream)
    print(f"{{path}}: {{stream.result.text}}")
'''


def readme_text(
    spec: ExportSpec, meta: dict[str, Any], features: dict[str, Any], options: SherpaOptions, max_frames: int
) -> str:
    post = meta["postprocessing"]
    repeat = int(post.get("frame_repeat", 1))
    rate, bins = int(features["sample_rate"]), int(features["num_mel_bins"])
    seconds = max_frames * int(round(rate * features["frame_shift_ms"] / 1000)) / rate if max_frames else None
    limit = f"{seconds:.1f} s" if seconds else "the recipe's data.max_duration"
    return f"""# {spec.model_name}: sherpa-onnx offline transducer ({options.precision})

Exported by kdtool from task `{spec.task}`, model `{spec.model_name}`. sherpa-onnx
(https://github.com/k2-fsa/sherpa-onnx, C++ on ONNX Runtime with Python, Android, iOS and
WebAssembly builds) loads this directory as it is.

| file | what |
|---|---|
| `encoder.onnx` | `x` (N, T, {bins}) fbank, `x_lens` (N,) int64 -> `encoder_out` (N, {repeat} T/4, J), `encoder_out_lens` |
| `decoder.onnx` | `y` (N, {post["context_size"]}) int64, the last {post["context_size"]} tokens -> `decoder_out` (N, J); metadata `vocab_size`, `context_size` |
| `joiner.onnx` | `encoder_out` (N, J), `decoder_out` (N, J) -> `logit` (N, {len(meta["vocabulary"])}) |
| `tokens.txt` | `symbol id` a line; `<blk>` is 0; `▁` is the space |
| `decode.py` | the Python invocation below as a script |
| `manifest.json` | what kdtool exported and verified |

## Python (`pip install sherpa-onnx soundfile`)

```bash
python decode.py file.wav
```

which runs

```python
import sherpa_onnx, soundfile as sf

recognizer = sherpa_onnx.OfflineRecognizer.from_transducer(
    encoder="encoder.onnx", decoder="decoder.onnx", joiner="joiner.onnx", tokens="tokens.txt",
    num_threads=1, sample_rate={rate}, feature_dim={bins}, decoding_method="greedy_search",
    model_type="transducer",
)
samples, rate = sf.read("file.wav", dtype="float32", always_2d=True)
stream = recognizer.create_stream()
stream.accept_waveform(rate, samples.mean(axis=1))
recognizer.decode_stream(stream)
print(stream.result.text)
```

## Command line (sherpa-onnx's C++ binaries, built from source or from its releases)

```bash
sherpa-onnx-offline \\
  --tokens=tokens.txt \\
  --encoder=encoder.onnx \\
  --decoder=decoder.onnx \\
  --joiner=joiner.onnx \\
  --num-threads=1 \\
  --decoding-method=greedy_search \\
  --model-type=transducer \\
  file.wav
```

## With kdtool

```bash
kdtool predict . file.wav      # decoded by sherpa-onnx (needs kdtool[sherpa])
kdtool eval .                  # WER on the run's validation set, through sherpa-onnx
kdtool bench .                 # end-to-end latency and throughput in sherpa-onnx
```

## What to know

- Features: sherpa-onnx computes them (Kaldi fbank, {bins} bins, 25 ms / 10 ms, the
  model's training features). Give it samples in [-1, 1]; any sample rate (it resamples to
  {rate} Hz).
- Length: the encoder accepts at most {max_frames} frames ({limit}); split longer audio.
- Text: `result.text` is the symbols joined, minus leading spaces and any space before
  punctuation (sherpa-onnx's clean-up); `result.tokens` are the symbols themselves, which
  is what kdtool joins when it runs this export.
- Decoding: sherpa-onnx's greedy search emits at most one token per encoder frame; this
  encoder repeats each 40 ms frame {repeat} times, so up to {repeat} tokens per 40 ms
  (what kdtool's own greedy search allows). sherpa-onnx's timestamps assume 40 ms frames:
  divide them by {repeat}. `modified_beam_search` works too (`--decoding-method`,
  `max_active_paths`).
- Offline only: this encoder has no streaming (chunked) export yet.
"""


TARGETS = [
    TargetProfile(
        name="sherpa-onnx",
        exporter="sherpa",
        description=(
            "sherpa-onnx offline transducer (C++ on ONNX Runtime; Linux, macOS, Windows, Android, iOS, WASM), FP32"
        ),
        precision="fp32",
        options={"graph_optimization": "all"},
    ),
    TargetProfile(
        name="sherpa-onnx-int8",
        exporter="sherpa",
        description="sherpa-onnx offline transducer, weight-only (dynamic) INT8 graphs, as icefall ships them",
        precision="int8",
        options={"quantization": "dynamic", "per_channel": True},
    ),
]
