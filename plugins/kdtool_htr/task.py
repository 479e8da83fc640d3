"""The ``htr`` task: line-level handwritten text recognition with CTC, distilled HTR-JAND style.

Stages (by ``role``):

- ``teacher`` / ``baseline``: CTC loss (term ``ctc``).
- ``student`` with teachers: CTC plus KD on the teachers' per-frame posteriors (term ``kd``,
  the registered ``ctc_kd`` loss: temperature-scaled KL, padded frames masked, x T^2,
  blank-dominated frames down-weighted), optionally with a length curriculum.

Per-stage ``options`` (validated by :class:`HTRStageOptions`): ``curriculum`` and
``width_buckets`` (a batch, sorted by width, is run as that many sub-batches, each cropped to
its own widest line, so short lines do not pay for the padding of long ones).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdtool.distill import PointSpec
from kdtool.errors import RecipeError
from kdtool.export.spec import (
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    QuantizationHints,
    TensorSpec,
)
from kdtool.recipe import LossTerm
from kdtool.task import Predictor, PrimaryMetric, RoleSpec, Split, Task, TaskOptions

from .datasets import (
    FRAME_STRIDE,
    Charset,
    HTRDataOptions,
    LineDataset,
    LineRecord,
    charset_for,
    collate_lines,
    load_records,
    preprocess_file,
)
from .decoding import CharNGramLM, beam_search, greedy_decode
from .metrics import error_counts

if TYPE_CHECKING:
    from kdtool.engine.context import StepContext
    from kdtool.recipe import StageConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DecodingOptions(_Strict):
    """How evaluation turns per-frame log-probabilities into text."""

    kind: Literal["greedy", "beam"] = "greedy"
    beam_width: int = Field(default=8, ge=1)
    lm_order: int = Field(default=0, ge=0, description="character n-gram LM from the training text; 0 = none")
    lm_weight: float = Field(default=0.5, ge=0)
    insertion_bonus: float = 0.0
    prune: float = Field(default=-10.0, le=0, description="skip labels below this frame log-probability")


class PostprocessorRef(_Strict):
    """A registered post-processor (``register_postprocessors``) and its options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class HTROptions(TaskOptions):
    """The recipe's ``task.options`` for ``htr``."""

    decoding: DecodingOptions = Field(default_factory=DecodingOptions)
    postprocessor: PostprocessorRef | None = None
    eval_batch_size: int = Field(default=32, ge=1)
    report_lines: int = Field(default=12, ge=0, description="validation lines shown in the report figure")


class CurriculumOptions(_Strict):
    """Competence-based curriculum (Platanios et al. 2019) on line length.

    At progress ``p = step / (ramp x total steps)`` the stage trains on lines whose length
    percentile is at most ``c(p) = min(1, sqrt(start^2 + (1 - start^2) p))``; the rest of a
    batch is skipped (never fewer than ``min_batch`` lines: the shortest are kept)."""

    enabled: bool = False
    start: float = Field(default=0.3, gt=0, le=1)
    ramp: float = Field(default=0.5, gt=0, le=1)
    min_batch: int = Field(default=4, ge=1)

    def competence(self, step: int, total_steps: int) -> float:
        if not self.enabled or total_steps <= 0:
            return 1.0
        progress = step / (self.ramp * total_steps)
        return min(1.0, math.sqrt(self.start**2 + (1 - self.start**2) * progress))


class HTRStageOptions(_Strict):
    """Per-stage ``options`` of an ``htr`` recipe stage."""

    curriculum: CurriculumOptions = Field(default_factory=CurriculumOptions)
    width_buckets: int = Field(default=2, ge=1, le=16)


ROLES = {
    "teacher": RoleSpec("CTC on the labels", HTRStageOptions, loss_slots=("ctc",)),
    "student": RoleSpec(
        "CTC + KD on the teachers' per-frame posteriors (term `kd`; without teachers: CTC only)",
        HTRStageOptions,
        loss_slots=("ctc", "kd"),
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        "CTC only, the student's architecture (a control)",
        HTRStageOptions,
        loss_slots=("ctc",),
        baseline=True,
        deploy_rank=10,
    ),
}


def ctc_loss_sum(
    log_probs: torch.Tensor, labels: torch.Tensor, label_lengths: torch.Tensor, frames: torch.Tensor
) -> torch.Tensor:
    """Sum over lines of (CTC loss / label length), i.e. PyTorch's ``mean`` times N."""
    targets = torch.cat([labels[k, : int(n)] for k, n in enumerate(label_lengths)])
    per_line = F.ctc_loss(
        log_probs.float().transpose(0, 1),
        targets,
        frames,
        label_lengths,
        blank=0,
        reduction="none",
        zero_infinity=True,
    )
    return (per_line / label_lengths.clamp_min(1).to(per_line.dtype)).sum()


def width_chunks(rows: torch.Tensor, buckets: int) -> list[torch.Tensor]:
    """Split width-sorted row indices into up to ``buckets`` contiguous groups of equal size."""
    n = rows.numel()
    buckets = max(1, min(buckets, n))
    return [c for c in torch.tensor_split(rows, buckets) if c.numel() > 0]


class HTRTask(Task[HTROptions, HTRDataOptions]):
    """Handwritten text recognition (HTR-JAND): CTC teacher, CTC + posterior-KD student."""

    name = "htr"
    predict_inputs = (
        "images of one handwritten text line (PNG, JPEG, ...), scaled to the model's height; prints the text"
    )
    Options = HTROptions
    DataOptions = HTRDataOptions
    roles = ROLES  # stage roles and their options, checked when the recipe loads
    primary_metric = PrimaryMetric("cer", higher_is_better=False)
    description = (
        "teacher: CTC; student: CTC + KD on the teacher's per-frame posteriors (curriculum optional); "
        "baseline: CTC only"
    )

    # Per-frame CTC log-posteriors (B, T, V) with the valid frames per line; the student and
    # its teachers share the frame rate. Any KD loss that accepts sequence_posteriors pairs them.
    distill_points = (
        PointSpec("sequence_posteriors", description="(B, T, V) CTC log-posteriors with frame lengths"),
    )
    default_between = {"student": "sequence_posteriors", "teacher": "sequence_posteriors"}

    options: HTROptions
    data: HTRDataOptions

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._records: dict[str, list[LineRecord]] = {}
        self._datasets: dict[str, LineDataset] = {}
        self.last_examples: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- data

    def records(self, split: str) -> list[LineRecord]:
        if split not in self._records:
            self._records[split] = load_records(split, self.data, seed=self.seed, cache_dir=self.cache_dir)
        return self._records[split]

    @cached_property
    def charset(self) -> Charset:
        if self.data.charset is None and self.data.source != "embedded":
            return charset_for(self.data, self.records("train"))
        return charset_for(self.data, [])

    def build_dataset(self, split: Split) -> LineDataset:
        if split not in self._datasets:
            self._datasets[split] = LineDataset(
                self.records(split), self.charset, self.data, train=split == "train", seed=self.seed
            )
        return self._datasets[split]

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return collate_lines(items)

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        if arch != "htr_jand":
            return options
        filled = dict(options)
        for key, value in (("num_classes", self.charset.num_classes), ("height", self.data.height)):
            if key in filled and filled[key] != value:
                raise RecipeError(
                    f"models.{model_name}.options.{key} is {filled[key]} but the data decides {value}; remove it"
                )
            filled[key] = value
        return filled

    # ---------------------------------------------------------------- training

    def stage_options(self, stage: StageConfig) -> HTRStageOptions:
        opts: HTRStageOptions = super().stage_options(stage)  # validated once, at recipe load
        return opts

    def default_distill(self, stage: StageConfig) -> list[LossTerm]:
        """A student with teachers distils with ``ctc_kd`` when its recipe lists no KD loss."""
        if stage.teachers and stage.role == "student":
            return [LossTerm(name="kd", loss="ctc_kd")]
        return []

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """``log_probs`` (N, T, C) of the teacher (several teachers: log of the mean posterior)."""
        outs = [teacher(batch["image"]).float() for teacher in teachers.values()]
        if len(outs) == 1:
            return {"log_probs": outs[0]}
        return {"log_probs": torch.logsumexp(torch.stack(outs), dim=0) - math.log(len(outs))}

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        # Sub-batches are cropped to their widest line, so a line's frame count depends on its
        # batch; with augmentation the teacher's input changes every epoch anyway.
        return False

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        opts = self.stage_options(stage)
        model = models[stage.model]
        distil = bool(stage.teachers) and stage.role == "student"
        competence = opts.curriculum.competence(ctx.step, ctx.total_steps)
        difficulty = batch["difficulty"]
        keep = difficulty <= competence
        if int(keep.sum()) < opts.curriculum.min_batch:
            easiest = difficulty.argsort()[: opts.curriculum.min_batch]
            keep = torch.zeros_like(keep)
            keep[easiest] = True
        rows = keep.nonzero().flatten()  # width-sorted (collate sorts widest first)
        total = rows.numel()
        ctc_total = torch.zeros((), device=ctx.device)
        kd_totals: dict[str, torch.Tensor] = {}
        for chunk in width_chunks(rows, opts.width_buckets):
            frames = batch["frames"][chunk]
            width = int(frames.max()) * FRAME_STRIDE
            image = batch["image"][chunk, :, :, :width]
            with ctx.autocast():
                log_probs = model(image)
            ctc_total = ctc_total + ctc_loss_sum(
                log_probs, batch["label"][chunk], batch["label_length"][chunk], frames
            )
            if distil:
                teacher = ctx.teacher_outputs({"index": batch["index"][chunk], "image": image})["log_probs"]
                ctx.expose("sequence_posteriors", log_probs.float(), lengths=frames)
                ctx.expose("sequence_posteriors", teacher.float(), side="teacher", lengths=frames)
                for name, value in ctx.distill().items():  # the recipe's KD terms, per line-width chunk
                    kd_totals[name] = kd_totals.get(name, torch.zeros((), device=ctx.device)) + value * chunk.numel()
        losses = {"ctc": ctc_total / total}
        for name, value in kd_totals.items():
            losses[name] = value / total
        return losses

    # ---------------------------------------------------------------- evaluation

    @cached_property
    def language_model(self) -> CharNGramLM | None:
        order = self.options.decoding.lm_order
        if order <= 0:
            return None
        texts = self.build_dataset("train").texts
        return CharNGramLM(order, self.charset.num_classes).fit(self.charset.encode(t) for t in texts)

    @cached_property
    def postprocessor(self) -> Callable[[list[str]], list[str]] | None:
        ref = self.options.postprocessor
        if ref is None:
            return None
        from kdtool.plugins import get_registries

        factory = get_registries().postprocessors.get(ref.name)
        return factory(list(self.build_dataset("train").texts), **ref.options)

    def decode(self, log_probs: torch.Tensor, frames: torch.Tensor) -> list[str]:
        """Text of each line (greedy or beam per ``task.options.decoding``), post-processed."""
        d = self.options.decoding
        if d.kind == "greedy":
            ids = greedy_decode(log_probs, frames)
        else:
            ids = [
                beam_search(
                    log_probs[k, : int(frames[k])],
                    beam_width=d.beam_width,
                    lm=self.language_model,
                    lm_weight=d.lm_weight,
                    insertion_bonus=d.insertion_bonus,
                    prune=d.prune,
                )
                for k in range(log_probs.shape[0])
            ]
        texts = [self.charset.decode(i) for i in ids]
        return self.postprocessor(texts) if self.postprocessor is not None else texts

    def _batches(self, split: Split, limit: int | None) -> Iterator[dict[str, Any]]:
        dataset = self.build_dataset(split)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        was_train = dataset.train
        dataset.train = False  # evaluation never augments
        try:
            items = [dataset[i] for i in range(n)]
        finally:
            dataset.train = was_train
        items.sort(key=lambda it: int(it["width"]))
        size = self.options.eval_batch_size
        for start in range(0, len(items), size):
            yield collate_lines(items[start : start + size])

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        refs: list[str] = []
        hyps: list[str] = []
        sources: list[str] = []
        indices: list[int] = []
        for batch in self._batches(split, limit):
            (log_probs,) = predictor(batch["image"])[:1]
            hyps += self.decode(log_probs, batch["frames"])
            refs += batch["text"]
            sources += batch["source"]
            indices += batch["index"].tolist()
        counts = error_counts(refs, hyps)
        metrics = {
            "cer": counts["char_errors"] / max(1, counts["chars"]),
            "wer": counts["word_errors"] / max(1, counts["words"]),
        }
        for source in sorted(set(sources)):
            picked = [k for k, s in enumerate(sources) if s == source]
            c = error_counts([refs[k] for k in picked], [hyps[k] for k in picked])
            metrics[f"cer_{source}"] = c["char_errors"] / max(1, c["chars"])
        order = sorted(range(len(indices)), key=lambda k: indices[k])
        self.last_examples = [{"index": indices[k], "ref": refs[k], "hyp": hyps[k]} for k in order]
        return metrics

    # ---------------------------------------------------------------- export

    def _metadata(self) -> DeployMetadata:
        d = self.options.decoding
        rule = "ctc_greedy" if d.kind == "greedy" else "ctc_beam"
        return DeployMetadata(
            task=self.name,
            labels=self.charset.labels,
            preprocessing={
                "kind": "text_line_image",
                "channels": "gray",
                "height": self.data.height,
                "keep_aspect": True,
                "max_width": self.data.max_width,
                "invert": self.data.invert,
                "normalise": "invert dark-on-light, subtract the median, divide by the max ink; values in [0, 1]",
                "pad_width_to_multiple": FRAME_STRIDE,
                "pad_value": 0.0,
                "layout": "N,1,H,W",
            },
            postprocessing={
                "kind": rule,
                "blank": 0,
                "frame_stride": FRAME_STRIDE,
                "outputs": "log_probs",
                "beam_width": d.beam_width if d.kind == "beam" else 1,
                "lm_order": d.lm_order if d.kind == "beam" else 0,
                "charset": self.charset.chars,
                "postprocessor": self.options.postprocessor.name if self.options.postprocessor else None,
            },
            extra={
                "charset": self.charset.chars,
                "decoding_rule": (
                    "take argmax per frame over log_probs, merge repeated labels, drop blank (0); "
                    "label k >= 1 is charset[k - 1]; frames beyond ceil(width / 4) are padding"
                ),
            },
        )

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        model.eval()
        height, max_width = self.data.height, self.data.max_width
        opt_w = max(8, (max_width // 2) // FRAME_STRIDE * FRAME_STRIDE)
        max_w = 2 * max_width // FRAME_STRIDE * FRAME_STRIDE
        num_classes = self.charset.num_classes

        def calibration(n: int) -> Iterator[tuple[torch.Tensor, ...]]:
            dataset = self.build_dataset("val")
            for i in range(min(n, len(dataset))):
                image = dataset.line_image(i)
                width = -(-image.shape[1] // FRAME_STRIDE) * FRAME_STRIDE
                padded = np.zeros((height, width), dtype=np.float32)
                padded[:, : image.shape[1]] = image
                yield (torch.from_numpy(padded)[None, None],)

        graph = GraphSpec(
            name="recognizer",
            module=model,
            inputs=[
                TensorSpec(
                    "image",
                    ("batch", 1, height, "width"),
                    description="text line, ink high in [0, 1], zero padded",
                )
            ],
            outputs=[
                TensorSpec(
                    "log_probs",
                    ("batch", "frames", num_classes),
                    role="output",
                    description="per-frame CTC log-probabilities (blank = 0), frames = width / 4",
                )
            ],
            dynamic_axes={
                "batch": DynamicAxis(1, 1, 32),
                "width": DynamicAxis(32, opt_w, max_w),
                "frames": DynamicAxis(32 // FRAME_STRIDE, opt_w // FRAME_STRIDE, max_w // FRAME_STRIDE),
            },
            quantization=QuantizationHints(preferred="static", exclude_op_types=["Softmax", "LogSoftmax"]),
            calibration_inputs=calibration,
        )
        return ExportSpec(task=self.name, model_name=model_name, graphs=[graph], metadata=self._metadata())

    # ---------------------------------------------------------------- deployment

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        pre = metadata.get("preprocessing", {})
        labels = metadata.get("labels") or []
        results = []
        for path in inputs:
            image = preprocess_file(
                Path(path),
                height=int(pre["height"]),
                max_width=int(pre["max_width"]),
                invert=pre.get("invert", "auto"),
            )
            stride = int(pre.get("pad_width_to_multiple", FRAME_STRIDE))
            width = -(-image.shape[1] // stride) * stride
            padded = np.zeros((image.shape[0], width), dtype=np.float32)
            padded[:, : image.shape[1]] = image
            (log_probs,) = predictor(torch.from_numpy(padded)[None, None])[:1]
            frames = -(-image.shape[1] // FRAME_STRIDE)
            ids = greedy_decode(log_probs, [frames])[0]
            text = "".join(labels[i] for i in ids if 0 < i < len(labels))
            confidence = float(log_probs[0, :frames].max(dim=-1).values.mean().exp())
            results.append({"path": str(path), "text": text, "mean_frame_confidence": round(confidence, 4)})
        return results

    # ---------------------------------------------------------------- report

    def write_figures(self, predictor: Predictor, model_name: str, out_dir: Path) -> list[Path]:
        """Validation lines with their ground truth and prediction (PNG) plus the same as JSON."""
        n = self.options.report_lines
        if n <= 0:
            return []
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.evaluate(predictor, "val")
        # Evenly spaced lines, so every data source of the split is shown.
        step = max(1, len(self.last_examples) // n)
        examples = self.last_examples[::step][:n]
        dataset = self.build_dataset("val")
        out_dir.mkdir(parents=True, exist_ok=True)
        fig, axes = plt.subplots(len(examples), 1, figsize=(8, 1.0 * len(examples) + 0.5), squeeze=False)
        for ax, ex in zip(axes[:, 0], examples, strict=True):
            ax.imshow(1.0 - dataset.line_image(ex["index"]), cmap="gray", vmin=0, vmax=1, aspect="equal")
            ok = ex["ref"] == ex["hyp"]
            ax.set_title(
                f"truth: {ex['ref']}\npred:  {ex['hyp']}",
                fontsize=7,
                loc="left",
                color="black" if ok else "darkred",
            )
            ax.axis("off")
        fig.suptitle(f"{model_name}: validation lines", fontsize=9)
        fig.tight_layout()
        png = out_dir / f"htr_{model_name}_val_lines.png"
        fig.savefig(png, dpi=110)
        plt.close(fig)
        (out_dir / f"htr_{model_name}_val_lines.json").write_text(
            json.dumps(examples, indent=1, ensure_ascii=False)
        )
        return [png]
