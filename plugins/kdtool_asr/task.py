"""Task ``asr_supernet``: TODM, "Train Once, Deploy Many" RNN-T models (arXiv 2309.01947).

Stages:
- ``supernet`` role: the sandwich rule each step. The largest subnet trains on the RNN-T loss
  (term ``rnnt``); its lattice logits, detached, are the soft targets of ``num_random`` random
  subnets and the smallest one, each trained on
  ``kd_weight(step) * KD + subnet_rnnt_weight(step) * RNN-T`` (terms ``kd``, ``subnet_rnnt``).
  KD is in-place alpha-divergence (the recipe's ``{name: kd, loss: alpha_div}``: AlphaNet's
  max(D_-1, D_+1), the a = -1 ratio clipped at 5, the a = +1 branch KL(p||q) unclipped,
  surrogate gradient). Each weight is a number or a ramp ``{start, end, from_step, to_step}``
  (linear between the two steps, constant outside). ``largest_only_steps: N`` trains only the
  largest for the first N steps (a warm-up: the teacher is worth distilling only once it has
  learnt something). Each forward is back-propagated at once (``ctx.backward``); under DDP all
  passes run under ``no_sync`` and the gradients are averaged once per step
  (:func:`kdtool_asr.training.sync_once`), one optimizer step per sandwich. Subnets are drawn
  from (seed, step) only, so every process samples the same ones.
- any other role (``baseline``, ``teacher``, ``student``): the model alone on the RNN-T loss.
  With ``options.twin: {stage, subnet}`` the stage is the *twin* of a named subnet: it starts
  from the supernet's slice of the same initial weights, trains with the dropout that subnet
  gets inside the supernet, and must share the supernet stage's steps, batch size, optimizer
  and schedule (the engine gives every stage the same data order). The default recipe trains
  the three named subnets' twins; the run's summary links each subnet to its twin
  (``twin``/``compare_with``), so the report's distillation gain is subnet vs twin.

Choices for the method's open points (all recipe options, stage ``options`` unless noted):
- Adaptive dropout: p(subnet) = dropout_min + (dropout_max - dropout_min) * f ** dropout_power,
  f = (params - params_smallest) / (params_largest - params_smallest): the largest gets
  ``dropout_max``, the smallest ``dropout_min``.
- KD target: the collapsed 3-class lattice distribution (``kd_distribution: collapsed``) on
  nodes with a next label; ``full`` distils the whole joiner output instead.
- Subnet loss. The paper (after AlphaNet) trains the sampled subnets on KD only
  (``subnet_rnnt_weight: 0, kd_weight: 1`` reproduces it; the LibriSpeech recipe keeps it).
  The embedded default adds the hard RNN-T loss (weight 1), ramps KD in from 0 to 1 over
  steps 200-600 after a 200-step largest-only warm-up, and samples one random subnet per
  sandwich. Measured (embedded data, seed 0, 1200 steps of batch 16, one thread, log-mel
  front end; the twins trained alone: 18.1 / 16.0 / 21.5 % WER, largest / middle / smallest):
  KD + hard loss at constant weights with two random subnets, 21.6 / 23.4 / 24.4 %; the
  default, 19.8 / 21.9 / 20.5 % in 451 s. KD-only subnets (the old default, 600 steps of
  batch 8, 3 seeds) stayed far behind the same architectures trained alone: 77.7 / 78.4 /
  81.2 % vs 46.1 / 42.1 / 60.0 %. Why the difference from the paper: in a run of a few
  thousand steps the teacher (the largest subnet) is still poor for much of it, and the
  in-place KD gradient on the shared weights pulls it against its own RNN-T gradient (an
  outside review measured a cosine of -0.90 at step 50); labels let the subnets learn while
  the teacher is poor, and KD adds the teacher's lattice distribution once it is worth
  copying. The paper trains long enough for the teacher to be good for most of the run.
  Ablations (``bench/asr_ablation.py``, seed 0, supernet stage only, named subnets' WER %
  largest / middle / smallest): default 17.9 / 20.0 / 21.2; without in-place KD 20.8 / 21.8 /
  23.8; the paper's KD-only subnets 28.7 / 33.5 / 33.1; without the warm-up 21.8 / 22.7 / 22.8;
  flat dropout 0.1 instead of adaptive 20.1 / 20.8 / 23.2; AdamW + cosine (lr 2e-3, untuned)
  instead of ScaledAdam + Eden 19.6 / 21.1 / 24.9. Every part helps at this scale (one seed).
- Named subnets reported and exportable: largest, middle (the middle choice of each
  dimension) and smallest (``named_subnets`` overrides). A supernet's evaluation also reports
  ``wer_<name>``/``cer_<name>`` of each named subnet (``task.options.eval_subnets``), which
  gives their learning curves; the run's figures show them next to their twins'.
- Gradient clipping: ScaledAdam's own (see :mod:`kdtool_asr.optim`), no stage ``grad_clip``.

Data (``data`` section): ``source: espeak`` (default; eSpeak NG speech synthesised at run
time, GPL-3, optional extra ``speech``: see :mod:`kdtool_asr.synth`), ``librispeech``
(``root``/``val_root`` in the LibriSpeech layout) or ``manifest`` (JSONL). Front end
(``data.features``, :mod:`kdtool_asr.audio`): Kaldi-compatible 80-bin fbank computed by
kaldi-native-fbank with sherpa-onnx's settings (``kind: fbank``, the default) or the earlier
torchaudio log-mel (``kind: logmel``). The run records its front end in
``asr_features.json`` and ``summary.json`` (``features``), exports in the manifest's
``preprocessing.features``; a run or export without the record was trained on log-mel and
keeps using it. SpecAugment on training features, global mean/variance normalisation fitted
on the training set and stored in the model (inside the encoder graph).

Export: three graphs in icefall's / sherpa-onnx's offline transducer layout (encoder
``x`` (N, T, mels), ``x_lens`` -> ``encoder_out`` (N, T', J), ``encoder_out_lens``;
stateless decoder ``y`` (N, context_size) -> ``decoder_out`` (N, J), or an LSTM decoder with
explicit state; joiner ``encoder_out``, ``decoder_out`` -> ``logit`` (N, V)); vocabulary,
feature settings, blank id and context size travel in the metadata. Target ``sherpa-onnx``
(:mod:`kdtool_asr.sherpa`) adds sherpa-onnx's metadata, ``tokens.txt`` and a README. Length bucketing is used for evaluation batches; training batches
come from the engine's shuffling sampler.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from kdtool.distill import PointSpec
from kdtool.errors import DataError, RecipeError
from kdtool.export.spec import (
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    QuantizationHints,
    TensorSpec,
)
from kdtool.recipe import LossTerm, StageConfig
from kdtool.run import Run
from kdtool.task import Predictor, PrimaryMetric, RoleSpec, Split, Task, TaskOptions

from .audio import (
    describe,
    hop_samples,
    make_frontend,
    min_samples,
    num_frames,
    read_audio,
    resolve_features,
)
from .data import (
    AsrDataset,
    CharTokenizer,
    SpecAugment,
    Utterance,
    collate,
    espeak_set,
    jsonl_manifest,
    length_buckets,
    librispeech,
)
from .decoding import DecoderInfo, decode_batch, error_rates
from .losses import lattice_mask, lattice_point, rnnt_loss
from .models import KernelConv, Subnet, SupernetRNNT
from .synth import words as synth_words
from .training import TwinOf, WeightSchedule, stage_mismatch, sync_once, weight_at


class AsrData(TaskOptions):
    source: Literal["espeak", "librispeech", "manifest"] = "espeak"
    # espeak
    num_train: int = Field(default=1200, ge=8)
    num_val: int = Field(default=200, ge=4)
    kinds: list[Literal["digits", "words"]] = Field(default_factory=lambda: ["digits", "words"])
    noise_snr_db: tuple[float, float] | None = (10.0, 30.0)
    # librispeech / manifest
    root: str | None = None
    val_root: str | None = None
    train_manifest: str | None = None
    val_manifest: str | None = None
    val_fraction: float = Field(default=0.1, gt=0, lt=1)
    max_duration: float = Field(default=20.0, gt=0)
    features: dict[str, Any] = Field(default_factory=dict)
    augment: bool = True
    spec_augment: dict[str, Any] = Field(default_factory=dict)
    stats_utterances: int = Field(default=300, ge=1)

    @model_validator(mode="after")
    def _sources(self) -> AsrData:
        if self.source == "librispeech" and not self.root:
            raise ValueError("source 'librispeech' needs 'root' (root/SPEAKER/CHAPTER/*.flac + *.trans.txt)")
        if self.source == "manifest" and not self.train_manifest:
            raise ValueError("source 'manifest' needs 'train_manifest' (JSONL: audio, text, duration)")
        try:
            resolve_features(self.features)
        except DataError as exc:
            raise ValueError(f"features: {exc.message}") from None
        try:
            SpecAugment(**self.spec_augment)
        except TypeError as exc:
            raise ValueError(f"spec_augment: {exc}") from None
        return self


class AsrOptions(TaskOptions):
    beam: int = Field(
        default=0, ge=0, description="evaluation decoding: 0 = greedy, else modified beam search"
    )
    max_symbols_per_frame: int = Field(default=3, ge=1)
    eval_batch_size: int = Field(default=32, ge=1)
    eval_subnets: bool = Field(
        default=True, description="a supernet's evaluation also reports wer_/cer_<named subnet>"
    )


class StageOptions(BaseModel):
    """``stages[].options`` of this task."""

    model_config = ConfigDict(extra="forbid")
    num_random: int = Field(default=2, ge=0)
    kd_distribution: Literal["collapsed", "full"] = "collapsed"
    # subnet loss = kd_weight(step) * KD + subnet_rnnt_weight(step) * RNN-T (each a number or a Ramp)
    kd_weight: WeightSchedule = 1.0
    subnet_rnnt_weight: WeightSchedule = 0.0
    largest_only_steps: int = Field(default=0, ge=0, description="warm-up: only the largest trains")
    twin: TwinOf | None = None
    dropout_max: float = Field(default=0.1, ge=0, lt=1)
    dropout_min: float = Field(default=0.0, ge=0, lt=1)
    dropout_power: float = Field(default=1.0, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1, description="fixed rate for non-supernet stages")
    named_subnets: dict[str, dict[str, int]] | None = None

    @model_validator(mode="after")
    def _weights(self) -> StageOptions:
        for name in ("kd_weight", "subnet_rnnt_weight"):
            value = getattr(self, name)
            if isinstance(value, float | int) and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        return self


_ALONE = "the model alone on the RNN-T loss (options.twin: the twin of a named subnet)"
ROLES = {
    "supernet": RoleSpec(
        "the sandwich rule: the largest subnet on RNN-T, random and smallest subnets on in-place KD "
        "from it (+ RNN-T)",
        StageOptions,
        loss_slots=("rnnt", "kd", "subnet_rnnt"),
        teachers="none",
        deploy_rank=20,
    ),
    "teacher": RoleSpec(_ALONE, StageOptions, loss_slots=("rnnt",)),
    "student": RoleSpec(
        _ALONE + "; with teachers, RNN-T + KD on the teachers' lattice (term `kd`, e.g. a "
        "quantization-aware stage distilling from the FP32 model it starts from)",
        StageOptions,
        loss_slots=("rnnt", "kd"),
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        _ALONE + "; a control of the supernet stage",
        StageOptions,
        loss_slots=("rnnt",),
        baseline=True,
        deploy_rank=10,
    ),
}


def _unwrap(model: nn.Module) -> SupernetRNNT:
    inner = getattr(model, "module", model)
    if not isinstance(inner, SupernetRNNT):
        raise RecipeError(f"task asr_supernet needs an asr_supernet_rnnt model, got {type(inner).__name__}")
    return inner


# --------------------------------------------------------------------------- export graphs


class SlicedKernelConv(KernelConv):
    """:class:`KernelConv` that convolves an input of L frames with only the first L taps of
    the kernel (the others only ever meet the zero left padding): the same output, but the
    cost grows with the input instead of with ``max_frames``. ONNX Runtime's depthwise Conv
    over the full ``kernel_frames``-tap kernel made the exported encoder 2-3x slower than
    PyTorch on short utterances."""

    def __init__(self, conv: KernelConv) -> None:
        nn.Module.__init__(self)
        self.register_buffer("weight", conv.weight)
        self.register_buffer("skip", conv.skip)
        self.length = conv.length

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, D, L)
        if torch.jit.is_tracing():
            # a traced graph (coremltools' trace frontend, ONNX's TorchScript fallback) cannot
            # hold the length-dependent slice below: use the full kernel (same output)
            return super().forward(x)
        frames = x.shape[-1]
        # beyond max_frames the kernel's further taps are zero (as KernelConv treats them)
        weight = F.pad(self.weight, (torch.sym_max(frames - self.length, 0), 0))
        weight = weight[:, :, weight.shape[-1] - frames :]
        y = F.conv1d(F.pad(x, (frames - 1, 0)), weight, groups=self.weight.shape[0])
        return y + self.skip * x


class EncoderGraph(nn.Module):
    """x (B, T, mels) features, x_lens (B,) -> encoder_out (B, T', J), encoder_out_lens (B,)."""

    def __init__(self, model: SupernetRNNT, subnet: Subnet, kernel_frames: int) -> None:
        super().__init__()
        self.model = model
        self.subnet = subnet
        self.convs = nn.ModuleList(
            SlicedKernelConv(model.blocks[i].export_conv(subnet.heads, kernel_frames))
            for i in range(subnet.layers)
        )

    def forward(self, features: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        convs: list[KernelConv] = list(self.convs)  # type: ignore[arg-type]
        return self.model.encode(features, lengths, self.subnet, 0.0, convs)


class StatelessDecoderGraph(nn.Module):
    """y (B, context_size) int64 -> decoder_out (B, J). Negative ids read as the blank:
    sherpa-onnx starts a hypothesis from the context ``[-1, ..., -1, blank]`` (icefall's
    decoder gives -1 a zero embedding), kdtool from ``[blank] * context_size``; the blank
    is the embedding's padding index (a zero row), so both start from the same state."""

    def __init__(self, model: SupernetRNNT) -> None:
        super().__init__()
        self.predictor = model.predictor
        self.blank = int(model.blank)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        y = torch.where(y < 0, torch.full_like(y, self.blank), y)
        return self.predictor.step(y)  # type: ignore[operator]


class LSTMDecoderGraph(nn.Module):
    def __init__(self, model: SupernetRNNT) -> None:
        super().__init__()
        self.predictor = model.predictor

    def forward(self, token: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.predictor.step(token, h, c)  # type: ignore[operator]


class JoinerGraph(nn.Module):
    def __init__(self, model: SupernetRNNT) -> None:
        super().__init__()
        self.out = model.joiner_out

    def forward(self, encoder_out: torch.Tensor, decoder_out: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(encoder_out + decoder_out))


# --------------------------------------------------------------------------- task


class AsrSupernetTask(Task[AsrOptions, AsrData]):
    name = "asr_supernet"
    predict_inputs = (
        "audio files (WAV, FLAC, OGG: what soundfile reads), mixed to mono and resampled; prints the text"
    )
    description = "ASR: TODM supernet RNN-T (S4D encoder), sandwich rule + in-place alpha-divergence KD"
    Options = AsrOptions
    DataOptions = AsrData
    roles = ROLES  # stage roles and their options, checked when the recipe loads
    primary_metric = PrimaryMetric("wer", higher_is_better=False)
    # In-place KD over the transducer lattice: each sampled subnet (student side) against the
    # largest subnet's detached joiner outputs (teacher side), per stage option kd_distribution
    # collapsed to (blank, next label, rest) log-probabilities or over the full vocabulary,
    # masked to nodes (t < T_b, u < U_b). Any KD loss that accepts "lattice" pairs them.
    distill_points = (PointSpec("lattice", description="(B, T, U+1, K) joiner log-probabilities, masked"),)
    default_between = {"student": "lattice", "teacher": "lattice"}

    options: AsrOptions
    data: AsrData

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._items: dict[str, list[Utterance]] | None = None
        self._datasets: dict[str, AsrDataset] = {}
        self.tokenizer: CharTokenizer | None = None
        self._stats: tuple[list[float], list[float]] | None = None
        self._subnet_params: dict[tuple[int, Subnet], int] = {}
        self._twin_dropout: dict[str, float] = {}
        self._supernet_of: weakref.WeakKeyDictionary[Predictor, tuple[SupernetRNNT, torch.device | str]] = (
            weakref.WeakKeyDictionary()
        )
        self._recorded_features: dict[str, Any] | None = None

    # ------------------------------------------------------------ data

    @property
    def features(self) -> dict[str, Any]:
        """The resolved front-end settings: the run's record when :meth:`prepare` found one
        (or found an older run without one: log-mel), else the recipe's ``data.features``."""
        if self._recorded_features is not None:
            return self._recorded_features
        return resolve_features(self.data.features)

    def prepare(self, run_dir: Path) -> None:
        """Record the front end in ``run_dir/asr_features.json`` at the start of a run; a run
        opened later (export, eval, resume) uses the recorded settings. A run that already
        holds checkpoints or models but no record predates the fbank front end: log-mel."""
        super().prepare(run_dir)
        from kdtool.io import read_json, write_json

        record = run_dir / FEATURES_RECORD
        if record.exists():
            saved = read_json(record, what="ASR feature record")
            self._recorded_features = resolve_features(saved.get("features"), default_kind="logmel")
        elif _has_progress(run_dir):
            self._recorded_features = resolve_features(None, default_kind="logmel")
        else:
            write_json(record, {"features": self.features})

    def _load(self) -> dict[str, list[Utterance]]:
        if self._items is not None:
            return self._items
        d = self.data
        if d.source == "espeak":
            common = {"kinds": list(d.kinds), "noise_snr_db": d.noise_snr_db, "cache_dir": self.cache_dir}
            train = espeak_set(count=d.num_train, seed=1000 + self.seed, **common)  # type: ignore[arg-type]
            val = espeak_set(count=d.num_val, seed=999_999, **common)  # type: ignore[arg-type]
        else:
            if d.source == "librispeech":
                assert d.root is not None
                train = librispeech(Path(d.root), d.max_duration)
                val = librispeech(Path(d.val_root), d.max_duration) if d.val_root else None
            else:
                assert d.train_manifest is not None
                train = jsonl_manifest(Path(d.train_manifest), d.max_duration)
                val = jsonl_manifest(Path(d.val_manifest), d.max_duration) if d.val_manifest else None
            if val is None:
                order = np.random.default_rng(1234).permutation(len(train))
                n_val = max(1, int(round(len(train) * d.val_fraction)))
                if len(train) - n_val < 1:
                    raise DataError(f"{len(train)} utterances are too few to split off a validation set")
                val = [train[i] for i in sorted(order[:n_val])]
                train = [train[i] for i in sorted(order[n_val:])]
        # espeak: the corpus' full alphabet; real data: a-z, apostrophe, space and the train set's characters
        base = (
            "".join(sorted(set(" ".join(synth_words()))))
            if d.source == "espeak"
            else "abcdefghijklmnopqrstuvwxyz' "
        )
        self.tokenizer = CharTokenizer.from_texts([u.text for u in train], base)
        self._items = {"train": train, "val": val}
        return self._items

    def build_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        if split not in self._datasets:
            items = self._load()[split]
            assert self.tokenizer is not None
            augment = (
                SpecAugment(**self.data.spec_augment) if (split == "train" and self.data.augment) else None
            )
            self._datasets[split] = AsrDataset(
                items,
                self.tokenizer,
                features=self.features,
                augment=augment,
                seed=self.seed,
                strict=split == "train",
            )
        return self._datasets[split]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate(items, blank=0)

    def feature_stats(self) -> tuple[list[float], list[float]]:
        """Global per-bin mean and std of the training log-mels (first ``stats_utterances``)."""
        if self._stats is None:
            dataset = self.build_dataset("train")
            assert isinstance(dataset, AsrDataset)
            n = min(len(dataset), self.data.stats_utterances)
            feats = torch.cat([dataset.features(i) for i in range(n)], 0).double()
            self._stats = (feats.mean(0).float().tolist(), feats.std(0).clamp_min(1e-3).float().tolist())
        return self._stats

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        self._load()
        assert self.tokenizer is not None
        mean, std = self.feature_stats()
        return {
            **options,
            "vocab_size": len(self.tokenizer.vocabulary),
            "blank": 0,
            "num_mel_bins": int(self.features["num_mel_bins"]),
            "feature_mean": [round(v, 6) for v in mean],
            "feature_std": [round(v, 6) for v in std],
            "max_frames": int(
                self.data.max_duration * self.features["sample_rate"] / hop_samples(self.features)
            )
            + 1,
        }

    # ------------------------------------------------------------ training

    def stage_options(self, stage: StageConfig) -> StageOptions:
        opts: StageOptions = super().stage_options(stage)  # validated once, at recipe load
        return opts

    def params_of(self, model: SupernetRNNT, subnet: Subnet) -> int:
        key = (id(model), subnet)
        if key not in self._subnet_params:
            self._subnet_params[key] = model.subnet_params(subnet)
        return self._subnet_params[key]

    def dropout_for(self, model: SupernetRNNT, subnet: Subnet, opts: StageOptions) -> float:
        small, large = self.params_of(model, model.smallest), self.params_of(model, model.largest)
        frac = 1.0 if large == small else (self.params_of(model, subnet) - small) / (large - small)
        return opts.dropout_min + (opts.dropout_max - opts.dropout_min) * max(0.0, frac) ** opts.dropout_power

    def init_stage_model(
        self,
        stage: StageConfig,
        model: nn.Module,
        initial_model: Callable[[str], nn.Module],
        stages: Sequence[StageConfig],
    ) -> None:
        """A twin stage (``options.twin``) starts from its supernet's slice of the supernet's
        initial weights and records the dropout that subnet gets inside the supernet."""
        opts = self.stage_options(stage)
        if opts.twin is None:
            return
        by_name = {s.name: s for s in stages}
        parent = by_name.get(opts.twin.stage)
        where = f"stage {stage.name!r} options.twin"
        if parent is None or parent.role != "supernet":
            raise RecipeError(
                f"{where}: {opts.twin.stage!r} is not a supernet stage of this recipe "
                f"(supernet stages: {[s.name for s in stages if s.role == 'supernet']})"
            )
        if opts.twin.check:
            differ = stage_mismatch(stage, parent)
            if differ:
                raise RecipeError(
                    f"{where}: a twin must train like its supernet stage {parent.name!r}, but "
                    f"{', '.join(differ)} differ; copy them from the supernet stage, or set twin.check: false"
                )
        supernet = _unwrap(initial_model(parent.model))
        sub = self._named_or_parse(supernet, parent, opts.twin.subnet, where)
        twin = _unwrap(model)
        state = supernet.extract(sub)
        own = twin.state_dict()
        mismatched = [k for k in own if k not in state or state[k].shape != own[k].shape]
        if mismatched:
            raise RecipeError(
                f"{where}: model {stage.model!r} is not the architecture of subnet {sub.label} of "
                f"{parent.model!r} (e.g. {mismatched[0]}); give it max_layers/max_heads/max_ffn "
                f"= {sub.layers}/{sub.heads}/{sub.ffn} and the supernet's other options"
            )
        with torch.no_grad():
            twin.load_state_dict(state)
        self._twin_dropout[stage.name] = self.dropout_for(supernet, sub, self.stage_options(parent))

    def _named_or_parse(
        self, model: SupernetRNNT, stage: StageConfig, value: str | dict[str, int], where: str
    ) -> Subnet:
        if isinstance(value, str):
            named = self.named_subnets(model, stage)
            if value not in named:
                raise RecipeError(f"{where}: no named subnet {value!r}; named: {sorted(named)}")
            return named[value]
        try:
            return model.check_subnet(Subnet.parse(value))  # type: ignore[arg-type]
        except (KeyError, ValueError) as exc:
            raise RecipeError(f"{where}: subnet {value}: {exc}") from None

    def default_distill(self, stage: StageConfig) -> list[LossTerm]:
        """The sandwich, and a student with teachers, distil with AlphaNet's alpha-divergence
        when the recipe lists no KD loss."""
        if stage.role == "supernet" or (stage.role == "student" and stage.teachers):
            return [LossTerm(name="kd", loss="alpha_div")]
        return []

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``lattice`` (B, T, U+1, K) of the teachers (each at its default subnet; several
        teachers: log of the mean of their distributions when collapsed, mean logits when full)."""
        opts = self.stage_options(stage)
        points = []
        for teacher in teachers.values():
            inner = _unwrap(teacher)
            logits, _ = teacher(batch["features"], batch["feature_lengths"], batch["targets"], subnet=None)
            points.append(lattice_point(logits, batch["targets"], inner.blank, opts.kd_distribution))
        if len(points) == 1:
            return {"lattice": points[0]}
        stacked = torch.stack(points)
        if opts.kd_distribution == "collapsed":
            return {"lattice": torch.logsumexp(stacked, dim=0) - math.log(len(points))}
        return {"lattice": stacked.mean(0)}

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        return False  # the lattice depends on the batch's padding, and SpecAugment changes inputs

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: Any
    ) -> dict[str, torch.Tensor]:
        opts = self.stage_options(stage)
        model = models[stage.model]
        inner = _unwrap(model)
        feats, lens = batch["features"], batch["feature_lengths"]
        targets, target_lens = batch["targets"], batch["target_lengths"]
        blank = inner.blank
        if stage.role != "supernet":
            if stage.name in self._twin_dropout:
                p = self._twin_dropout[stage.name]
            else:
                p = opts.dropout if opts.dropout is not None else opts.dropout_max
            logits, enc_lens = model(feats, lens, targets, subnet=None, dropout=p)
            terms = {"rnnt": rnnt_loss(logits, targets, enc_lens, target_lens, blank)}
            if stage.teachers and stage.role == "student":  # KD on the teachers' lattice
                teacher = ctx.teacher_outputs(batch)["lattice"]
                mask = lattice_mask(enc_lens, target_lens, teacher.shape[1], teacher.shape[2])
                ctx.expose("lattice", teacher, side="teacher", mask=mask)
                ctx.expose("lattice", lattice_point(logits, targets, blank, opts.kd_distribution), mask=mask)
                terms.update(ctx.distill())
            return terms

        # The sandwich rule: the largest on the RNN-T loss, then random subnets and the smallest
        # on kd_weight * KD + subnet_rnnt_weight * RNN-T; all backward passes accumulate and DDP
        # averages the gradients once per step (sync_once).
        step = int(ctx.step)
        kd_scale = weight_at(opts.kd_weight, step)
        hard_w = weight_at(opts.subnet_rnnt_weight, step)
        warm = step < opts.largest_only_steps
        largest = inner.largest
        # subnets are drawn from (seed, step) only, so every DDP process samples the same ones
        gen = torch.Generator(device=ctx.generator.device)
        gen.manual_seed((int(ctx.seed) * 7919 + step * 104729) & 0x7FFFFFFFFFFFFFFF)
        with sync_once(model):
            logits, enc_lens = model(
                feats, lens, targets, subnet=largest.to_dict(), dropout=self.dropout_for(inner, largest, opts)
            )
            loss = rnnt_loss(logits, targets, enc_lens, target_lens, blank)
            ctx.backward(loss * stage.loss_weight("rnnt"))
            terms = {"rnnt": loss.detach()}
            if warm:
                return terms
            teacher = logits.detach()
            del logits
            mask = lattice_mask(enc_lens, target_lens, teacher.shape[1], teacher.shape[2])
            ctx.expose(
                "lattice",
                lattice_point(teacher, targets, blank, opts.kd_distribution),
                side="teacher",
                mask=mask,
            )
            subnets = [inner.sample_subnet(gen) for _ in range(opts.num_random)] + [inner.smallest]
            kd_values: dict[str, list[torch.Tensor]] = {}
            sub_rnnt = []
            for sub in subnets:
                s_logits, _ = model(
                    feats, lens, targets, subnet=sub.to_dict(), dropout=self.dropout_for(inner, sub, opts)
                )
                total = torch.zeros((), device=s_logits.device)
                ctx.expose(
                    "lattice", lattice_point(s_logits, targets, blank, opts.kd_distribution), mask=mask
                )
                for name, kd in ctx.distill().items():  # the recipe's KD terms (default: alpha_div)
                    kd_w = kd_scale * stage.loss_weight(name)
                    if kd_w > 0:
                        total = total + kd * kd_w
                    kd_values.setdefault(name, []).append(kd.detach())
                if hard_w > 0:
                    r = rnnt_loss(s_logits, targets, enc_lens, target_lens, blank)
                    total = total + hard_w * r
                    sub_rnnt.append(r.detach())
                ctx.backward(total)
        # logged terms (the engine weights each KD term by its recipe weight, nothing more)
        for name, values in kd_values.items():
            terms[name] = torch.stack(values).sum() * kd_scale
        if sub_rnnt:
            terms["subnet_rnnt"] = torch.stack(sub_rnnt).sum() * hard_w
        return terms

    # ------------------------------------------------------------ evaluation

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        dataset = self.build_dataset(split)
        assert isinstance(dataset, AsrDataset)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        augment, dataset.augment = dataset.augment, None  # evaluation never augments (train: tune split)
        try:
            refs, hyps = self.transcribe(predictor, dataset, range(n))
        finally:
            dataset.augment = augment
        result = error_rates(refs, hyps)
        if predictor in self._supernet_of:
            result.update(self._named_subnet_rates(*self._supernet_of[predictor], split, limit, result))
        return result

    def _named_subnet_rates(
        self,
        model: SupernetRNNT,
        device: torch.device | str,
        split: Split,
        limit: int | None,
        default: dict[str, float],
    ) -> dict[str, float]:
        """``wer_<label>``/``cer_<label>`` of the named subnets (default names) of a supernet."""
        out: dict[str, float] = {}
        saved = model.default_subnet
        for label, sub in self.named_subnets(model, None).items():
            if sub == saved:
                rates = default
            else:
                model.default_subnet = sub
                try:
                    sub_predictor = Predictor.from_spec(self.export_spec(model, label), device)
                finally:
                    model.default_subnet = saved
                rates = self.evaluate(sub_predictor, split, limit=limit)
            out[f"wer_{label}"], out[f"cer_{label}"] = rates["wer"], rates["cer"]
        return out

    def transcribe(
        self,
        predictor: Predictor,
        dataset: AsrDataset,
        indices: Iterable[int],
        *,
        max_symbols: int | None = None,
    ) -> tuple[list[str], list[str]]:
        """References and hypotheses, in length-bucket order. A runner with its own front end
        and search (sherpa-onnx: ``recognize``) is given the waveforms instead of features."""
        info = DecoderInfo.from_metadata(predictor.metadata)
        vocab = predictor.metadata.get("vocabulary") or []
        idx = list(indices)
        lengths = [dataset.features(i).shape[0] for i in idx]
        refs: list[str] = []
        hyps: list[str] = []
        recognize = getattr(predictor, "recognize", None)
        for group in length_buckets(lengths, self.options.eval_batch_size):
            if callable(recognize):
                refs += [dataset.items[idx[g]].text for g in group]
                hyps += recognize([dataset.waveform(idx[g]) for g in group])
                continue
            items = [dataset[idx[g]] for g in group]
            batch = collate(items, blank=info.blank)
            enc, enc_lens = predictor.graphs["encoder"](batch["features"], batch["feature_lengths"])[:2]
            tokens = decode_batch(
                predictor,
                enc,
                enc_lens,
                info,
                beam=self.options.beam,
                max_symbols=max_symbols or self._max_symbols(predictor.metadata),
            )
            refs += [it["text"] for it in items]
            hyps += [_detokenize(vocab, t) for t in tokens]
        return refs, hyps

    def _max_symbols(self, metadata: dict[str, Any]) -> int:
        """Symbols per frame for evaluation: the recipe's, unless the graphs already repeat
        their frames (a sherpa-onnx export), whose metadata then says one per frame."""
        post = metadata.get("postprocessing", {})
        if post.get("frame_repeat"):
            return int(post.get("max_symbols_per_frame", 1))
        return self.options.max_symbols_per_frame

    # ------------------------------------------------------------ export

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        inner = _unwrap(model)
        self._load()
        vocab = self.tokenizer.vocabulary if self.tokenizer is not None else []
        if len(vocab) != inner.vocab_size:
            raise RecipeError(
                f"model {model_name!r} has {inner.vocab_size} output classes but the data's vocabulary has {len(vocab)}"
            )
        return make_export_spec(self.name, inner, model_name, vocab, self.features, self)

    def predictor(self, model: nn.Module, model_name: str, device: torch.device | str = "cpu") -> Predictor:
        predictor = Predictor.from_spec(self.export_spec(model, model_name), device)
        inner = _unwrap(model)
        if self.options.eval_subnets and inner.largest != inner.smallest:
            # evaluating a supernet also scores its named subnets (their learning curves)
            self._supernet_of[predictor] = (inner, device)
        return predictor

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        """Transcribe audio files (WAV, FLAC, OGG; any rate and channel count: resampled and
        mixed down). An unreadable, empty, too short (no feature frame) or too long (more
        frames than the exported encoder takes) file is a DataError naming it."""
        # an export without a feature kind was made before the fbank front end: log-mel
        settings = resolve_features(metadata["preprocessing"]["features"], default_kind="logmel")
        rate = int(settings["sample_rate"])
        frontend = make_frontend(settings)
        info = DecoderInfo.from_metadata(metadata)
        vocab = metadata.get("vocabulary") or []
        max_frames = int(metadata["preprocessing"].get("max_frames") or 0)
        fewest = max(min_samples(settings), rate // 100)
        recognize = getattr(predictor, "recognize", None)
        max_symbols = int(metadata.get("postprocessing", {}).get("max_symbols_per_frame", 3))
        results = []
        for path in inputs:
            wave = read_audio(path, rate)
            if wave.size < fewest:
                raise DataError(
                    f"audio file {path} is too short: {wave.size} samples at {rate} Hz "
                    f"({1000 * wave.size / rate:.1f} ms); the front end needs at least {fewest} samples "
                    f"({1000 * fewest / rate:.0f} ms) for one frame"
                )
            frames = num_frames(wave.size, settings)
            if max_frames and frames > max_frames:
                longest = max_frames * hop_samples(settings) / rate
                raise DataError(
                    f"audio file {path} is {wave.size / rate:.1f} s long; this model's encoder takes at most "
                    f"{max_frames} frames ({longest:.1f} s)",
                    hint=f"split the audio into pieces of at most {longest:.0f} s (e.g. at pauses) and decode each",
                )
            start = time.perf_counter()
            if callable(recognize):
                text = recognize([wave])[0]
            else:
                feats = frontend(wave)[None]
                # the exported encoder was traced with at least MIN_FRAMES frames: pad, masked by x_lens
                padded = torch.nn.functional.pad(feats, (0, 0, 0, max(0, MIN_FRAMES - feats.shape[1])))
                enc, enc_lens = predictor.graphs["encoder"](padded, torch.tensor([feats.shape[1]]))[:2]
                tokens = decode_batch(predictor, enc, enc_lens, info, beam=0, max_symbols=max_symbols)[0]
                text = _detokenize(vocab, tokens)
            results.append(
                {
                    "input": str(path),
                    "text": text,
                    "duration_s": round(wave.size / rate, 3),
                    "decode_ms": round((time.perf_counter() - start) * 1000, 2),
                    "runtime": predictor.kind,
                }
            )
        return results

    # ------------------------------------------------------------ subnets

    def named_subnets(self, model: SupernetRNNT, stage: StageConfig | None) -> dict[str, Subnet]:
        named = {"largest": model.largest, "middle": model.middle, "smallest": model.smallest}
        if stage is not None:
            custom = self.stage_options(stage).named_subnets
            if custom:
                named = {k: model.check_subnet(Subnet.parse(v)) for k, v in custom.items()}  # type: ignore[arg-type]
        return named

    def on_run_end(self, run: Run) -> None:
        """The named subnets of each supernet stage as models (role ``subnet``), each linked
        to its twin stage (``twin``; ``compare_with`` makes the report's distillation gain
        subnet vs twin, like with like), and two figures under ``RUN/figures/``: the named
        subnets and their twins on a size-vs-WER plot, and their validation WER vs step.
        Written into ``summary.json`` through ``run`` (under its lock)."""
        from kdtool.io import load_weights, read_json

        from .subnets import write_subnet_model

        run_dir = run.run_dir
        summary = run.reload()
        recipe = run.recipe
        done = summary.get("models", {})
        models: dict[str, Any] = {}
        for stage in recipe.stages:
            entry = done.get(stage.name)
            if stage.role != "supernet" or not entry or not entry.get("weights"):
                continue
            config = read_json(run_dir / entry["config"], what="model config")
            supernet = SupernetRNNT(**config["options"])
            supernet.load_state_dict(load_weights(run_dir / entry["weights"]))
            supernet.eval()
            named = self.named_subnets(supernet, stage)
            twins = self._twins_of(stage, recipe.stages, supernet, named)
            for label, sub in named.items():
                name = f"{stage.name}-{label}"
                twin = twins.get(sub)
                link = {"twin": twin, "compare_with": twin} if twin in done else {}
                models[name] = write_subnet_model(
                    self, run_dir, stage.name, supernet, config, sub, name, label=label, extra=link
                )
                if twin in done:
                    models[twin] = {**done[twin], "twin_of": name}
                    if sub == supernet.default_subnet:
                        models[stage.name] = {**entry, "compare_with": twin}
            self._write_figures(run_dir, stage.name, models, done)
        features = self.features

        def merge(summary: dict[str, Any]) -> None:
            summary["models"].update(models)
            summary["features"] = features

        run.update_summary(merge)

    def _twins_of(
        self,
        stage: StageConfig,
        stages: Sequence[StageConfig],
        supernet: SupernetRNNT,
        named: dict[str, Subnet],
    ) -> dict[Subnet, str]:
        """Subnet -> the name of the stage that trains it alone as the twin of ``stage``."""
        out: dict[Subnet, str] = {}
        for other in stages:
            twin = self.stage_options(other).twin if other.role != "supernet" else None
            if twin is None or twin.stage != stage.name:
                continue
            where = f"stage {other.name!r} options.twin"
            out[self._named_or_parse(supernet, stage, twin.subnet, where)] = other.name
        return out

    def _write_figures(self, run_dir: Path, stage: str, models: dict[str, Any], done: dict[str, Any]) -> None:
        from kdtool.engine.rundir import MetricsLog
        from kdtool.io import atomic_path
        from kdtool.report.plots import subnet_curves, subnet_twin_pareto

        points = []
        curves = []
        records = MetricsLog(run_dir / "metrics.jsonl").read()
        for entry in models.values():
            if entry.get("role") != "subnet" or entry.get("supernet") != stage:
                continue
            label = entry["subnet"]["label"]
            twin = done.get(entry.get("twin") or "")
            points.append(
                {
                    "label": label,
                    "params": entry["params"],
                    "wer": entry["metrics"].get("wer"),
                    "twin_params": twin.get("params") if twin else None,
                    "twin_wer": (twin.get("metrics") or {}).get("wer") if twin else None,
                }
            )
            curves.append((f"{label} (subnet)", stage, f"wer_{label}", ":"))
            if twin:
                curves.append((f"{label} (twin)", entry["twin"], "wer", "--"))
        figures = {
            f"todm_{stage}_pareto.png": subnet_twin_pareto(
                points, title=f"{stage}: named subnets vs their twins"
            ),
            f"todm_{stage}_learning_curves.png": subnet_curves(
                records, curves, title=f"{stage}: validation WER of the named subnets and their twins"
            ),
        }
        for file, png in figures.items():
            if png is None:
                continue
            path = run_dir / "figures" / file
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)


FEATURES_RECORD = "asr_features.json"
# Fewest feature frames the encoder is exported (traced) with; shorter inputs are zero-padded
# to it (the padding is masked by x_lens).
MIN_FRAMES = 16


def _has_progress(run_dir: Path) -> bool:
    """Whether a run directory already holds trained weights or checkpoints."""
    return any(
        (run_dir / sub).is_dir() and any(p.is_file() for p in (run_dir / sub).rglob("*"))
        for sub in ("models", "checkpoints")
    )


def _detokenize(vocab: list[str], tokens: list[int]) -> str:
    return "".join(vocab[t] for t in tokens if 0 < t < len(vocab))


def make_export_spec(
    task_name: str,
    model: SupernetRNNT,
    model_name: str,
    vocab: list[str],
    features: dict[str, Any],
    task: AsrSupernetTask | None = None,
) -> ExportSpec:
    model = model.eval()
    features = resolve_features(features)
    sub = model.default_subnet
    kernel_frames = int(model.output_lengths(torch.tensor(model.max_frames)))
    encoder = EncoderGraph(model, sub, kernel_frames).eval()
    mels = model.num_mel_bins
    joiner_dim = model.joiner_dim
    predictor_kind = model.predictor.kind
    context = model.predictor.context_size
    state_dim = getattr(model.predictor, "dim", 0)
    min_time = MIN_FRAMES

    def encoder_calibration(n: int) -> Iterable[tuple[torch.Tensor, ...]]:
        if task is None:
            return
        dataset = task.build_dataset("val")
        assert isinstance(dataset, AsrDataset)
        for i in range(min(n, len(dataset))):
            f = dataset.features(i)[None]
            yield f, torch.tensor([f.shape[1]])

    def decoder_calibration(n: int) -> Iterable[tuple[torch.Tensor, ...]]:
        gen = torch.Generator().manual_seed(0)
        for _ in range(n):
            if predictor_kind == "stateless":
                yield (torch.randint(0, model.vocab_size, (1, context), generator=gen),)
            else:
                yield (
                    torch.randint(0, model.vocab_size, (1, 1), generator=gen),
                    torch.zeros(1, 1, state_dim),
                    torch.zeros(1, 1, state_dim),
                )

    def joiner_calibration(n: int) -> Iterable[tuple[torch.Tensor, ...]]:
        count = 0
        for feats, lens in encoder_calibration(n):
            with torch.no_grad():
                enc, _ = encoder(feats, lens)
                dec = (
                    model.predictor.step(torch.zeros(1, context, dtype=torch.long))  # type: ignore[operator]
                    if predictor_kind == "stateless"
                    else model.predictor.step(
                        torch.zeros(1, 1, dtype=torch.long),
                        torch.zeros(1, 1, state_dim),
                        torch.zeros(1, 1, state_dim),
                    )[0]  # type: ignore[operator]
                )
            for t in range(0, enc.shape[1], max(1, enc.shape[1] // 4)):
                yield enc[:, t], dec
                count += 1
                if count >= n:
                    return

    batch_axis = DynamicAxis(1, 1, 64)
    graphs = [
        GraphSpec(
            name="encoder",
            module=encoder,
            inputs=[
                TensorSpec(
                    "x",
                    ("batch", "time", mels),
                    description="fbank (or log-mel) frames, see preprocessing.features",
                ),
                TensorSpec(
                    "x_lens",
                    ("batch",),
                    dtype="int64",
                    value_range=(1, min_time + 1),
                    description="valid frames",
                ),
            ],
            outputs=[
                TensorSpec("encoder_out", ("batch", "frames", joiner_dim), role="output"),
                TensorSpec("encoder_out_lens", ("batch",), dtype="int64", role="output"),
            ],
            dynamic_axes={
                "batch": batch_axis,
                "time": DynamicAxis(min_time, min(400, model.max_frames), model.max_frames),
                "frames": DynamicAxis(min_time // 4, min(100, kernel_frames), kernel_frames),
            },
            quantization=QuantizationHints(preferred="dynamic"),
            calibration_inputs=encoder_calibration,
        ),
    ]
    if predictor_kind == "stateless":
        graphs.append(
            GraphSpec(
                name="decoder",
                module=StatelessDecoderGraph(model).eval(),
                inputs=[
                    TensorSpec(
                        "y",
                        ("batch", context),
                        dtype="int64",
                        value_range=(0, model.vocab_size),
                        description="the last context_size tokens (negative ids read as blank)",
                    )
                ],
                outputs=[TensorSpec("decoder_out", ("batch", joiner_dim), role="output")],
                dynamic_axes={"batch": batch_axis},
                quantization=QuantizationHints(preferred="dynamic"),
                calibration_inputs=decoder_calibration,
            )
        )
    else:
        graphs.append(
            GraphSpec(
                name="decoder",
                module=LSTMDecoderGraph(model).eval(),
                inputs=[
                    TensorSpec("token", ("batch", 1), dtype="int64", value_range=(0, model.vocab_size)),
                    TensorSpec("h", (1, "batch", state_dim), role="state_in"),
                    TensorSpec("c", (1, "batch", state_dim), role="state_in"),
                ],
                outputs=[
                    TensorSpec("decoder_out", ("batch", joiner_dim), role="output"),
                    TensorSpec("h_out", (1, "batch", state_dim), role="state_out"),
                    TensorSpec("c_out", (1, "batch", state_dim), role="state_out"),
                ],
                dynamic_axes={"batch": batch_axis},
                quantization=QuantizationHints(preferred="dynamic"),
                calibration_inputs=decoder_calibration,
            )
        )
    graphs.append(
        GraphSpec(
            name="joiner",
            module=JoinerGraph(model).eval(),
            inputs=[
                TensorSpec("encoder_out", ("batch", joiner_dim)),
                TensorSpec("decoder_out", ("batch", joiner_dim)),
            ],
            outputs=[TensorSpec("logit", ("batch", model.vocab_size), role="output")],
            dynamic_axes={"batch": batch_axis},
            quantization=QuantizationHints(preferred="dynamic"),
            calibration_inputs=joiner_calibration,
        )
    )
    return ExportSpec(
        task=task_name,
        model_name=model_name,
        graphs=graphs,
        metadata=DeployMetadata(
            task=task_name,
            vocabulary=list(vocab),
            preprocessing={
                "kind": "audio",
                "sample_rate": int(features["sample_rate"]),
                "features": dict(features),
                "feature": describe(features),
                "normalization": "global mean/variance, inside the encoder graph",
                "max_frames": model.max_frames,
            },
            postprocessing={
                "kind": "transducer_greedy",
                "blank": model.blank,
                "context_size": context,
                "predictor": predictor_kind,
                "state_dim": state_dim,
                "max_symbols_per_frame": 3,
                "subsampling": 4,
            },
            extra={
                "subnet": sub.to_dict(),
                "kernel_frames": kernel_frames,
                "graphs": ["encoder", "decoder", "joiner"],
            },
        ),
    )
