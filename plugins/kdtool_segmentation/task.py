"""The ``segmentation_lad`` task: semantic segmentation with Label Assisted Distillation.

LAD (arXiv 2407.13254, METHODS.md section 4) trains a teacher of the *same light
architecture* as the student, but with a 4-channel stem that also reads a noised label map,
then distils it into the student, whose 4th channel is all zeros.

Stages (by ``role``):

- ``teacher``: dual-path consistency training. Two independently noised label channels
  (:func:`~kdtool_segmentation.noise.teacher_label_channel`) of the same image; loss terms
  ``ce`` (CE of both paths, summed), ``aux`` (auxiliary-head CE of both paths, summed; the
  paper's weight 0.4) and ``cwd`` (symmetric CWD between the paths; weight 5).
- ``student``: ``ce``, ``aux`` (weight 0.02) and ``cwd`` (weight 3) against the frozen
  teacher, which sees the label through the fixed mapping plus N(0, 0.02^2) noise, x 100.
- ``baseline``: the same student, data, steps and schedule with ``ce`` only (stage option
  ``aux: true`` adds the auxiliary CE).

Recipe weights multiply these unweighted terms (``losses: [{name: cwd, weight: 5}]``).

Choices for the method's *open* points (each is a recipe option):

- Void pixels in the label channel: task option ``void`` (see :mod:`kdtool_segmentation.noise`).
- Where the symmetric CWD stops the gradient: stage option ``stop_gradient`` (see
  :mod:`kdtool_segmentation.losses`); default: at the target of each direction.
- Which maps CWD compares: stage option ``cwd_resolution``: ``feature`` (default; the
  classifier's logits at the backbone's output stride, where CWD is applied in the CWD paper
  and in mmrazor's segmentation configs) or ``input`` (logits upsampled to the image size).
- The two teacher paths run as one forward pass of a 2N batch (one batch-norm statistic over
  both views of the same images; faster on CPU, and a single forward per backward keeps
  DistributedDataParallel happy).
- Evaluating the teacher: its label channel is the fixed mapping *without* noise; its metrics
  also report ``miou_label_zeroed`` (the label channel set to 0), for reference.

Export: the student's stem is sliced to 3 channels (:func:`~kdtool_segmentation.models.slice_stem_to_rgb`),
so its graph takes ``image`` (N, 3, H, W) with dynamic N, H and W and returns ``logits``
(N, C, H, W) or ``labels`` (N, H, W) (task option ``export_output``). A label-assisted teacher's
graph takes ``image`` and ``label_channel`` (N, 1, H, W), the mapped label map; the metadata
gives the mapping. Class names and the palette are in the metadata.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from kdtool.distill import PointSpec
from kdtool.errors import KdtoolError, RecipeError
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

from . import datasets as ds
from .losses import symmetric_cwd
from .metrics import confusion_matrix, denormalise, overlay_grid, save_mask_png, scores
from .models import SegmentationNet, slice_stem_to_rgb
from .noise import (
    VOID_INDEX,
    VoidMode,
    fixed_class_values,
    student_stage_label_channel,
    teacher_label_channel,
)

if TYPE_CHECKING:
    from kdtool.engine.context import StepContext
    from kdtool.recipe import StageConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- options


class SyntheticOptions(TaskOptions):
    """The embedded procedurally generated scenes (``format: synthetic``)."""

    train_samples: int = Field(default=2000, ge=1)
    val_samples: int = Field(default=200, ge=1)
    size: int = Field(default=64, ge=16)
    max_shapes: int = Field(default=4, ge=1)
    void_width: int = Field(default=1, ge=0)
    noise: float = Field(default=0.06, ge=0)


class SegmentationData(TaskOptions):
    """The recipe's ``data`` section."""

    format: Literal["synthetic", "voc", "cityscapes", "manifest"] = "synthetic"
    root: str | None = None
    train_split: str = "train"
    val_split: str = "val"
    train_manifest: str | None = None
    val_manifest: str | None = None
    classes: list[str] | None = None
    palette: list[tuple[int, int, int]] | None = None
    crop_size: int = Field(default=64, ge=8)
    scale_range: tuple[float, float] = (0.5, 2.0)
    flip: bool = True
    val_max_size: int | None = Field(default=None, ge=8)
    max_train_samples: int | None = Field(default=None, ge=1)
    max_val_samples: int | None = Field(default=None, ge=1)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions)

    @model_validator(mode="after")
    def _sources(self) -> SegmentationData:
        if self.format in ("voc", "cityscapes") and not self.root:
            raise ValueError(f"format {self.format!r} needs 'root' (the dataset folder)")
        if self.format == "manifest":
            if not (self.train_manifest and self.val_manifest):
                raise ValueError("format 'manifest' needs 'train_manifest' and 'val_manifest'")
            if not self.classes:
                raise ValueError("format 'manifest' needs 'classes' (class names, index = class id)")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be (low, high) with 0 < low <= high, got {self.scale_range}")
        if any(s <= 0 for s in self.std):
            raise ValueError("std must be positive")
        return self


class SegmentationOptions(TaskOptions):
    """The recipe's ``task.options``."""

    void: VoidMode = "extra_class"
    label_scale: float = Field(default=100.0, gt=0)
    export_output: Literal["logits", "labels"] = "logits"
    export_min_size: int = Field(default=32, ge=8)
    export_max_size: int | None = Field(default=None, ge=8)
    export_max_batch: int = Field(default=8, ge=1)
    eval_batch_size: int = Field(default=16, ge=1)
    overlay_samples: int = Field(default=6, ge=0)


class TeacherStageOptions(TaskOptions):
    """``stages[].options`` of a ``teacher`` stage."""

    pixel_noise: float = Field(default=0.03, ge=0)
    cwd_temperature: float = Field(default=4.0, gt=0)
    stop_gradient: bool = True
    cwd_resolution: Literal["feature", "input"] = "feature"


class StudentStageOptions(TaskOptions):
    """``stages[].options`` of a ``student`` stage."""

    teacher_pixel_noise: float = Field(default=0.02, ge=0)
    cwd_temperature: float = Field(default=4.0, gt=0)
    cwd_resolution: Literal["feature", "input"] = "feature"
    aux: bool = True


class BaselineStageOptions(TaskOptions):
    """``stages[].options`` of a ``baseline`` stage."""

    aux: bool = False


ROLES: dict[str, RoleSpec] = {
    "teacher": RoleSpec(
        "label-assisted dual-path training (two noised label channels of one image)",
        TeacherStageOptions,
        loss_slots=("ce", "aux", "cwd"),
        teachers="none",
    ),
    "student": RoleSpec(
        "CE + aux CE + CWD from the frozen label-assisted teacher",
        StudentStageOptions,
        loss_slots=("ce", "aux", "cwd"),
        teachers="required",
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        "the student with CE only (a control)",
        BaselineStageOptions,
        loss_slots=("ce", "aux"),
        teachers="none",
        baseline=True,
        deploy_rank=10,
    ),
}


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


# --------------------------------------------------------------------------- export modules


class _ImageOnly(nn.Module):
    """Deploy interface of a student: image (N, 3, H, W) -> logits or labels."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        logits = self.model(image)["out"]
        return logits.argmax(1) if self.output == "labels" else logits


class _ImageAndLabel(nn.Module):
    """Deploy interface of a label-assisted teacher: image + label channel -> logits or labels."""

    def __init__(self, model: nn.Module, output: str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, image: torch.Tensor, label_channel: torch.Tensor) -> torch.Tensor:
        logits = self.model(torch.cat([image, label_channel], dim=1))["out"]
        return logits.argmax(1) if self.output == "labels" else logits


# --------------------------------------------------------------------------- the task


class SegmentationLADTask(Task[SegmentationOptions, SegmentationData]):
    """Semantic segmentation with Label Assisted Distillation (see the module docstring)."""

    name: ClassVar[str] = "segmentation_lad"
    predict_inputs: ClassVar[str] = (
        "image files (PNG, JPEG, ...) for a student model; writes <name>_mask.png (the label-assisted "
        "teacher also needs label maps, so it is not run by predict)"
    )
    Options: ClassVar[type[TaskOptions]] = SegmentationOptions
    DataOptions: ClassVar[type[TaskOptions]] = SegmentationData
    primary_metric: ClassVar[PrimaryMetric] = PrimaryMetric("miou", higher_is_better=True)
    roles = ROLES  # stage roles and their options, checked when the recipe loads
    description: ClassVar[str] = (
        "teacher: label-assisted dual-path training; student: CE + aux CE + CWD from the teacher; "
        "baseline: the student with CE only"
    )
    # Segmentation logits as dense feature maps: ``features/out`` (N, C, H, W) at input size and
    # ``features/out_lowres`` at the backbone's output stride; student and frozen teacher alike.
    distill_points: ClassVar[tuple[PointSpec, ...]] = (
        PointSpec("features", "out", "(N, C, H, W) class logits at input size"),
        PointSpec("features", "out_lowres", "(N, C, h, w) class logits at the backbone's stride"),
    )
    default_between: ClassVar[dict[str, str] | None] = {
        "student": "features/out_lowres",
        "teacher": "features/out_lowres",
    }

    options: SegmentationOptions
    data: SegmentationData

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._datasets: dict[str, ds.SegmentationDataset] = {}
        self.class_names, self.palette = self._classes_and_palette()

    # ---------------------------------------------------------------- data

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _classes_and_palette(self) -> tuple[list[str], list[tuple[int, int, int]]]:
        d = self.data
        if d.format == "synthetic":
            names, palette = list(ds.SHAPE_CLASSES), list(ds.SYNTH_PALETTE)
        elif d.format == "voc":
            names, palette = list(ds.VOC_CLASSES), ds.voc_palette(len(ds.VOC_CLASSES))
        elif d.format == "cityscapes":
            names, palette = list(ds.CITYSCAPES_CLASSES), list(ds.CITYSCAPES_PALETTE)
        else:
            names, palette = list(d.classes or []), ds.voc_palette(len(d.classes or []))
        if d.classes is not None:
            names = list(d.classes)
        if d.palette is not None:
            palette = [tuple(c) for c in d.palette]  # type: ignore[misc]
        if len(names) < 2 or len(names) >= VOID_INDEX:
            raise RecipeError(f"data.classes: need 2 to 254 classes, got {len(names)}")
        if len(palette) < len(names):
            raise RecipeError(f"data.palette has {len(palette)} colours for {len(names)} classes")
        return names, palette[: len(names)]

    def build_dataset(self, split: Split) -> ds.SegmentationDataset:
        if split in self._datasets:
            return self._datasets[split]
        d = self.data
        train = split == "train"
        limit = d.max_train_samples if train else d.max_val_samples
        describe = None
        palette = self.palette
        if d.format == "synthetic":
            syn = d.synthetic
            count = syn.train_samples if train else syn.val_samples
            if limit is not None:
                count = min(count, limit)
            # Validation scenes come from a disjoint index range of the same generator.
            source: ds.SampleSource = ds.SyntheticScenes.generate(
                self.seed,
                count,
                syn.size,
                offset=0 if train else 10_000_000,
                max_shapes=syn.max_shapes,
                void_width=syn.void_width,
                noise=syn.noise,
            )
        else:
            pairs = self._pairs(split)
            if limit is not None:
                pairs = pairs[:limit]
            count = len(pairs)
            transform = ds.cityscapes_mask_transform if d.format == "cityscapes" else None
            source = ds.pair_loader(pairs, mask_transform=transform, palette=palette)
            describe = lambda i: f"mask {pairs[i].mask}"  # noqa: E731
        dataset = ds.SegmentationDataset(
            source,
            count,
            num_classes=self.num_classes,
            mean=d.mean,
            std=d.std,
            train=train,
            seed=self.seed,
            crop_size=d.crop_size,
            scale_range=d.scale_range,
            flip=d.flip,
            max_size=d.val_max_size,
            describe=describe,
        )
        self._datasets[split] = dataset
        return dataset

    def _pairs(self, split: Split) -> list[ds.Pair]:
        d = self.data
        name = d.train_split if split == "train" else d.val_split
        if d.format == "voc":
            return ds.voc_pairs(Path(d.root or "."), name)
        if d.format == "cityscapes":
            return ds.cityscapes_pairs(Path(d.root or "."), name)
        manifest = d.train_manifest if split == "train" else d.val_manifest
        path = Path(manifest or "")
        if not path.is_absolute() and d.root:
            path = Path(d.root) / path
        return ds.manifest_pairs(path)

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        given = options.get("num_classes")
        if given is not None and given != self.num_classes:
            raise RecipeError(
                f"models.{model_name}.options.num_classes is {given}, but the data has {self.num_classes} classes; "
                "leave it out and it is filled from the data"
            )
        return {**options, "num_classes": self.num_classes}

    # ---------------------------------------------------------------- training

    def _options_for(self, stage: StageConfig) -> TaskOptions:
        opts: TaskOptions = self.stage_options(stage)  # validated once, when the recipe loads
        return opts

    def _ce(self, logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), mask, ignore_index=VOID_INDEX)

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        opts = self._options_for(stage)
        model = models[stage.model]
        image, mask = batch["image"], batch["mask"]
        n = image.shape[0]
        if isinstance(opts, TeacherStageOptions):
            if not getattr(_unwrap(model), "label_assisted", False):
                raise RecipeError(
                    f"stage {stage.name!r}: a LAD teacher reads the label channel; set "
                    f"models.{stage.model}.options.label_assisted: true"
                )
            channels = [
                teacher_label_channel(
                    mask, self.num_classes, generator=ctx.generator, pixel_std=opts.pixel_noise,
                    scale=self.options.label_scale, void=self.options.void,
                )
                for _ in range(2)
            ]  # fmt: skip
            x = torch.cat([torch.cat([image, c], dim=1) for c in channels], dim=0)
            with ctx.autocast():
                out = model(x)
            target = torch.cat([mask, mask], dim=0)
            key = "out_lowres" if opts.cwd_resolution == "feature" else "out"
            losses = {
                "ce": 2 * self._ce(out["out"], target),  # = CE(path 1) + CE(path 2): equal pixel counts
                "cwd": symmetric_cwd(
                    out[key][:n], out[key][n:], opts.cwd_temperature, stop_gradient=opts.stop_gradient
                ),
            }
            if "aux" in out:
                losses["aux"] = 2 * self._ce(out["aux"], target)
            return losses
        if getattr(_unwrap(model), "label_assisted", False):
            raise RecipeError(
                f"stage {stage.name!r} ({stage.role}): model {stage.model!r} is label-assisted, but a "
                "student sees no label (its 4th channel is zero); drop label_assisted from its options"
            )
        x = torch.cat([image, image.new_zeros((n, 1, *image.shape[2:]))], dim=1)
        if isinstance(opts, StudentStageOptions):
            if len(stage.teachers) != 1:
                raise RecipeError(
                    f"stage {stage.name!r}: a LAD student learns from exactly one teacher, got {len(stage.teachers)}"
                )
            batch = dict(batch)
            batch["teacher_label_channel"] = student_stage_label_channel(
                mask, self.num_classes, generator=ctx.generator, pixel_std=opts.teacher_pixel_noise,
                scale=self.options.label_scale, void=self.options.void,
            )  # fmt: skip
            teacher = ctx.teacher_outputs(batch)
            with ctx.autocast():
                out = model(x)
            losses = {"ce": self._ce(out["out"], mask)}
            for key in ("out_lowres", "out"):
                if ctx.wants(f"features/{key}", "student"):
                    ctx.expose(f"features/{key}", out[key])
                if ctx.wants(f"features/{key}", "teacher"):
                    ctx.expose(f"features/{key}", teacher[key], side="teacher")
            losses.update(ctx.distill())  # the recipe's KD terms (default: cwd)
            if opts.aux and "aux" in out:
                losses["aux"] = self._ce(out["aux"], mask)
            return losses
        assert isinstance(opts, BaselineStageOptions)
        with ctx.autocast():
            out = model(x)
        losses = {"ce": self._ce(out["out"], mask)}
        if opts.aux and "aux" in out:
            losses["aux"] = self._ce(out["aux"], mask)
        return losses

    def distill_between(self, stage: StageConfig) -> dict[str, str] | None:
        """CWD compares the maps ``cwd_resolution`` names (student stages)."""
        opts = self._options_for(stage)
        key = "out_lowres" if getattr(opts, "cwd_resolution", "feature") == "feature" else "out"
        return {"student": f"features/{key}", "teacher": f"features/{key}"}

    def default_distill(self, stage: StageConfig) -> list[LossTerm]:
        """A student stage distils with the registered ``cwd`` at ``cwd_temperature``."""
        opts = self._options_for(stage)
        if not isinstance(opts, StudentStageOptions):
            return []
        return [LossTerm(name="cwd", loss="cwd", options={"temperature": opts.cwd_temperature})]

    def check_teacher(self, stage: StageConfig, name: str, teacher: nn.Module) -> None:
        """A LAD teacher must be a label-assisted segmentation net with the data's classes."""
        net = _unwrap(teacher)
        if not isinstance(net, SegmentationNet):
            raise RecipeError(
                f"stage {stage.name!r}: teacher {name!r} is a {type(net).__name__}, not a segmentation net"
            )
        if net.num_classes != self.num_classes:
            raise RecipeError(
                f"stage {stage.name!r}: teacher {name!r} predicts {net.num_classes} classes, the data has {self.num_classes}"
            )
        if not net.label_assisted:
            raise RecipeError(
                f"stage {stage.name!r}: teacher {name!r} is not label-assisted; a LAD teacher reads the label channel "
                "(train it in a teacher stage with label_assisted: true)"
            )

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        """The frozen teacher's logits (``out`` at input size, ``out_lowres`` at feature size)
        given the image and ``batch["teacher_label_channel"]`` (set by the student step)."""
        if "teacher_label_channel" not in batch:
            raise KdtoolError("segmentation_lad: teacher outputs need the batch's 'teacher_label_channel'")
        teacher = teachers[stage.teachers[0].name]
        out = teacher(torch.cat([batch["image"], batch["teacher_label_channel"]], dim=1))
        return {"out": out["out"], "out_lowres": out["out_lowres"]}

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        """Exact only without label noise and without random augmentation of the crops."""
        if stage.role != "student":
            return False
        opts = self._options_for(stage)
        d = self.data
        fixed_crop = d.format == "synthetic" and d.crop_size == d.synthetic.size
        return (
            isinstance(opts, StudentStageOptions)
            and opts.teacher_pixel_noise == 0
            and d.scale_range == (1.0, 1.0)
            and not d.flip
            and fixed_crop
        )

    # ---------------------------------------------------------------- evaluation

    def _batches(
        self, split: Split, limit: int | None, batch_size: int
    ) -> Iterator[tuple[list[int], torch.Tensor, torch.Tensor]]:
        """Batches of consecutive same-size items: (indices, images (B,3,H,W), masks (B,H,W))."""
        dataset = self.build_dataset(split)
        if split == "train":
            # Evaluate training data without augmentation.
            dataset = _unaugmented(dataset)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        pending: list[dict[str, Any]] = []
        for i in range(count):
            item = dataset[i]
            if pending and (len(pending) == batch_size or item["image"].shape != pending[0]["image"].shape):
                yield (
                    [p["index"] for p in pending],
                    torch.stack([p["image"] for p in pending]),
                    torch.stack([p["mask"] for p in pending]),
                )
                pending = []
            pending.append(item)
        if pending:
            yield (
                [p["index"] for p in pending],
                torch.stack([p["image"] for p in pending]),
                torch.stack([p["mask"] for p in pending]),
            )

    def _label_channel(self, mask: torch.Tensor) -> torch.Tensor:
        return student_stage_label_channel(
            mask, self.num_classes, pixel_std=0.0, scale=self.options.label_scale, void=self.options.void
        )

    @staticmethod
    def _labels(output: torch.Tensor) -> torch.Tensor:
        return output.argmax(1) if output.dim() == 4 else output.long()

    @staticmethod
    def _graph(predictor: Predictor) -> tuple[Any, list[str]]:
        name = next(iter(predictor.graphs))
        return predictor.graphs[name], list(predictor.input_names.get(name, ["image"]))

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        run, inputs = self._graph(predictor)
        label_assisted = len(inputs) > 1
        c = self.num_classes
        conf = torch.zeros((c, c), dtype=torch.long)
        conf_zeroed = torch.zeros((c, c), dtype=torch.long)
        for _, images, masks in self._batches(split, limit, self.options.eval_batch_size):
            if label_assisted:
                pred = self._labels(run(images, self._label_channel(masks))[0])
                zeroed = self._labels(run(images, torch.zeros_like(images[:, :1]))[0])
                conf_zeroed += confusion_matrix(zeroed, masks, c)
            else:
                pred = self._labels(run(images)[0])
            conf += confusion_matrix(pred, masks, c)
        metrics = {k: v for k, v in scores(conf, self.class_names).items() if v == v}  # drop NaN IoUs
        if label_assisted:
            zeroed_scores = scores(conf_zeroed, self.class_names)
            metrics["miou_label_zeroed"] = zeroed_scores["miou"]
            metrics["pixel_acc_label_zeroed"] = zeroed_scores["pixel_acc"]
        return metrics

    # ---------------------------------------------------------------- export

    def _size_axes(self) -> tuple[DynamicAxis, DynamicAxis]:
        opt = self.data.crop_size
        lo = min(self.options.export_min_size, opt)
        hi = max(self.options.export_max_size or max(4 * opt, 256), opt)
        return DynamicAxis(lo, opt, hi), DynamicAxis(lo, opt, hi)

    def before_quantization_aware(self, model: nn.Module, model_name: str) -> None:
        """The student's export drops its stem's 4th (always-zero) input channel; zero that
        channel's weights, which never affect an output, so that each stem filter's per-channel
        INT8 scale (max |w| / 127) is the same in training as in the 3-channel export."""
        net = _unwrap(model)
        if isinstance(net, SegmentationNet) and net.in_channels == 4 and not net.label_assisted:
            stem = net.backbone.stem[0]
            conv = getattr(stem, "layer", stem)
            with torch.no_grad():
                conv.weight[:, 3:].zero_()

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        net = _unwrap(model)
        if not isinstance(net, SegmentationNet):
            raise KdtoolError(f"segmentation_lad cannot export a {type(net).__name__}")
        label_assisted = bool(getattr(net, "label_assisted", False))
        output = self.options.export_output
        c = self.num_classes
        height, width = self._size_axes()
        axes = {"batch": DynamicAxis(1, 1, self.options.export_max_batch), "height": height, "width": width}
        image_spec = TensorSpec(
            "image", ("batch", 3, "height", "width"), description="RGB, (x / 255 - mean) / std, NCHW"
        )
        if output == "labels":
            out_spec = TensorSpec(
                "labels", ("batch", "height", "width"), dtype="int64", role="output", description="class ids"
            )
        else:
            out_spec = TensorSpec(
                "logits", ("batch", c, "height", "width"), role="output", description="class scores"
            )
        net = net.eval()
        if label_assisted:
            module: nn.Module = _ImageAndLabel(net, output).eval()
            inputs = [
                image_spec,
                TensorSpec(
                    "label_channel", ("batch", 1, "height", "width"),
                    description="label map through the fixed mapping x label_scale (see metadata.extra.label_channel)",
                ),
            ]  # fmt: skip
        else:
            sliced = slice_stem_to_rgb(net) if net.in_channels == 4 else net
            module = _ImageOnly(sliced, output).eval()
            inputs = [image_spec]
        extra: dict[str, Any] = {
            "palette": [list(p) for p in self.palette],
            "ignore_index": VOID_INDEX,
            "label_assisted": label_assisted,
        }
        if label_assisted:
            extra["label_channel"] = {
                "mapping": "k -> (k - (C + 1) / 2) / ((C - 1) / 2), times scale",
                "values": [v * self.options.label_scale for v in fixed_class_values(c).tolist()],
                "void": self.options.void,
                "scale": self.options.label_scale,
            }
        metadata = DeployMetadata(
            task=self.name,
            labels=list(self.class_names),
            preprocessing={
                "kind": "image",
                "channels": "RGB",
                "layout": "NCHW",
                "scale": 1.0 / 255.0,
                "mean": list(self.data.mean),
                "std": list(self.data.std),
                "size": [height.opt, width.opt],
                "min_size": height.min,
                "max_size": height.max,
                "resize": "none: any height and width in [min_size, max_size]; shrink larger images",
            },
            postprocessing={"kind": "argmax", "axis": 1} if output == "logits" else {"kind": "labels"},
            extra=extra,
        )

        def calibration(n: int) -> Iterable[tuple[torch.Tensor, ...]]:
            produced = 0
            for _, images, masks in self._batches("val", None, 1):
                if produced >= n:
                    return
                produced += 1
                yield (images, self._label_channel(masks)) if label_assisted else (images,)

        graph = GraphSpec(
            name="segmenter",
            module=module,
            inputs=inputs,
            outputs=[out_spec],
            dynamic_axes=axes,
            quantization=QuantizationHints(preferred="static"),
            calibration_inputs=calibration,
        )
        return ExportSpec(task=self.name, model_name=model_name, graphs=[graph], metadata=metadata)

    # ---------------------------------------------------------------- deployment

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        run, names = cls._graph(predictor)
        if len(names) > 1:
            raise KdtoolError(
                "this model is a label-assisted teacher: it needs a label map besides the image; "
                "kdtool predict runs students (export the student, the run's default)"
            )
        pre = metadata.get("preprocessing", {})
        labels = list(metadata.get("labels") or [])
        palette = metadata.get("extra", {}).get("palette") or ds.voc_palette(max(len(labels), 1))
        mean, std = pre.get("mean", IMAGENET_MEAN), pre.get("std", IMAGENET_STD)
        max_size = int(pre.get("max_size", 4096))
        min_size = int(pre.get("min_size", 1))
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for path in inputs:
            rgb = ds.load_image(path)
            h, w = rgb.shape[:2]
            work = rgb
            if max(h, w) > max_size or min(h, w) < min_size:
                f = max_size / max(h, w) if max(h, w) > max_size else min_size / min(h, w)
                nh, nw = max(min_size, round(h * f)), max(min_size, round(w * f))
                work = np.asarray(ds.Image.fromarray(rgb).resize((nw, nh), ds.Image.Resampling.BILINEAR))
            x = ds.normalise(work, mean, std).unsqueeze(0)
            pred = cls._labels(run(x)[0])[0]
            if pred.shape != (h, w):
                pred = F.interpolate(pred[None, None].float(), size=(h, w), mode="nearest")[0, 0].long()
            mask = pred.numpy().astype(np.uint8)
            mask_path = save_mask_png(mask, palette, out_dir / f"{path.stem}_mask.png")
            overlay_path = overlay_grid(
                [(rgb, np.full_like(mask, VOID_INDEX), mask)], palette, out_dir / f"{path.stem}_overlay.png"
            )
            counts = np.bincount(mask.ravel(), minlength=len(labels) or int(mask.max()) + 1)
            fractions = {
                (labels[i] if i < len(labels) else str(i)): round(float(v) / mask.size, 6)
                for i, v in enumerate(counts)
                if v
            }
            results.append(
                {
                    "input": str(path),
                    "mask": str(mask_path),
                    "overlay": str(overlay_path),
                    "height": h,
                    "width": w,
                    "class_fractions": fractions,
                }
            )
        return results

    def write_figures(self, predictor: Predictor, model_name: str, out_dir: Path) -> list[Path]:
        """Validation overlays: image | truth | prediction | blend, one row per sample."""
        n = self.options.overlay_samples
        if n == 0:
            return []
        run, inputs = self._graph(predictor)
        rows = []
        for _, images, masks in self._batches("val", n, n):
            if len(inputs) > 1:
                pred = self._labels(run(images, self._label_channel(masks))[0])
            else:
                pred = self._labels(run(images)[0])
            for img, truth, p in zip(images, masks, pred, strict=True):
                rows.append(
                    (
                        denormalise(img, self.data.mean, self.data.std),
                        truth.numpy().astype(np.uint8),
                        p.numpy().astype(np.uint8),
                    )
                )
        if not rows:
            return []
        return [overlay_grid(rows, self.palette, out_dir / f"segmentation_overlays_{model_name}.png")]


def _unaugmented(dataset: ds.SegmentationDataset) -> ds.SegmentationDataset:
    """A shallow copy of a dataset that serves its samples without augmentation."""
    clone = copy.copy(dataset)
    clone.train = False
    return clone


__all__ = ["SegmentationLADTask"]
