"""Task ``image_classification``: distil a teacher, often the user's own, into a small classifier.

Stages: ``teacher`` (cross-entropy; only when the recipe trains one), ``student``
(cross-entropy plus any registered KD loss on logits: ``kl_t``, ``alpha_div``, ``mse_logits``)
and ``baseline_student`` (cross-entropy only). Teachers may be an earlier stage, another run, a
registered architecture with a safetensors file, an ONNX file or a ``.pt2`` program; files from
elsewhere take pixels in [0, 1] (the deploy interface), trained stages take normalised pixels.

Semi-supervised: ``data.unlabeled_root`` adds images without labels to the training split; they
train on the teacher's outputs alone (cross-entropy ignores them). With ``dual_head: true`` in
the student's model options (DHO), the label head learns from labels and the teacher head from
the teacher, and the two are combined at inference.

The embedded default data is scikit-learn's bundled handwritten digits (1,797 real 8x8 scans).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.data import Dataset

from kdtool.distill import PointSpec
from kdtool.errors import DataError
from kdtool.export.spec import (
    ClassPostprocessing,
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    ImagePreprocessing,
    TensorSpec,
)
from kdtool.recipe import StageConfig
from kdtool.task import Predictor, PrimaryMetric, RoleSpec, Split, Task, TaskOptions

from .data import (
    IMAGE_SUFFIXES,
    ArrayDataset,
    FileDataset,
    digits_arrays,
    image_folder,
    load_image,
    read_manifest,
    split_indices,
)

UNLABELED = -1
EXTERNAL_SOURCES = ("onnx", "program")


class ClassificationData(TaskOptions):
    source: Literal["digits", "imagefolder", "manifest"] = "digits"
    root: str | None = Field(default=None, description="ImageFolder root (source: imagefolder)")
    train_manifest: str | None = None
    val_manifest: str | None = None
    val_root: str | None = None
    val_fraction: float = Field(default=0.2, gt=0, lt=1)
    image_size: int = Field(default=16, ge=4)
    channels: Literal[1, 3] = 1
    augment: bool = True
    labels: list[str] | None = None
    unlabeled_root: str | None = Field(default=None, description="images without labels (KD only)")
    mean: float = 0.5
    std: float = 0.5

    @model_validator(mode="after")
    def _sources(self) -> ClassificationData:
        if self.source == "imagefolder" and not self.root:
            raise ValueError("source 'imagefolder' needs 'root' (root/<class>/<image>)")
        if self.source == "manifest" and not self.train_manifest:
            raise ValueError("source 'manifest' needs 'train_manifest' (CSV path,label or JSONL)")
        return self


class StageOptions(TaskOptions):
    """Per-stage options (``stages[].options``) of image_classification."""

    labeled_fraction: float = Field(
        default=1.0, gt=0, le=1, description="fraction of training samples whose labels the stage sees"
    )


ROLES = {
    "teacher": RoleSpec("trains on the labels (a model to learn from)", StageOptions, loss_slots=("ce",)),
    "student": RoleSpec(
        "learns from its teachers' logits (each registered loss in `losses`) and the labels",
        StageOptions,
        loss_slots=("ce",),
        teachers="required",
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        "the student's architecture on the labels alone (a control)",
        StageOptions,
        loss_slots=("ce",),
        baseline=True,
        deploy_rank=10,
    ),
}


class Normalized(nn.Module):
    """The deployable classifier: normalises [0, 1] pixels, then runs the network."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net = net
        self.mean = mean
        self.std = std

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.net((image - self.mean) / self.std)


class ClassificationTask(Task[TaskOptions, ClassificationData]):
    name = "image_classification"
    predict_inputs = "image files (PNG, JPEG, ...: what Pillow opens), resized to the model's input; prints the top-3 labels"
    description = "image classification: soft-target KD from a teacher into a smaller classifier"
    DataOptions = ClassificationData
    roles = ROLES  # stage roles and their options, checked when the recipe loads
    primary_metric = PrimaryMetric("accuracy", higher_is_better=True)
    # The student's class scores (a dual-head student: its distillation head) and the mean of
    # the teachers' logits; any KD loss that accepts "logits" pairs them.
    distill_points = (PointSpec("logits", description="(B, C) class logits"),)
    default_between = {"student": "logits", "teacher": "logits"}

    data: ClassificationData

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._splits: dict[str, Dataset[dict[str, Any]]] | None = None
        self.labels: list[str] = []
        self._labeled_masks: dict[tuple[int, float], torch.Tensor] = {}

    # ------------------------------------------------------------ data

    def _load(self) -> dict[str, Dataset[dict[str, Any]]]:
        if self._splits is not None:
            return self._splits
        d = self.data
        if d.source == "digits":
            images, labels, self.labels = digits_arrays(d.image_size)
            if d.channels == 3:
                images = images.repeat(1, 3, 1, 1)
            train_idx, val_idx = split_indices(len(labels), d.val_fraction, seed=1234)
            train: Dataset[dict[str, Any]] = ArrayDataset(
                images[train_idx], labels[train_idx], augment=d.augment, seed=self.seed
            )
            val: Dataset[dict[str, Any]] = ArrayDataset(
                images[val_idx], labels[val_idx], augment=False, seed=self.seed
            )
        else:
            if d.source == "imagefolder":
                assert d.root is not None
                items, self.labels = image_folder(Path(d.root), d.labels)
                val_items = image_folder(Path(d.val_root), self.labels)[0] if d.val_root else None
            else:
                assert d.train_manifest is not None
                items, self.labels = read_manifest(Path(d.train_manifest), d.labels)
                val_items = read_manifest(Path(d.val_manifest), self.labels)[0] if d.val_manifest else None
            if val_items is None:
                train_idx, val_idx = split_indices(len(items), d.val_fraction, seed=1234)
                val_items = [items[i] for i in val_idx]
                items = [items[i] for i in train_idx]
            train = FileDataset(
                items, channels=d.channels, size=d.image_size, augment=d.augment, seed=self.seed
            )
            val = FileDataset(
                val_items, channels=d.channels, size=d.image_size, augment=False, seed=self.seed
            )
        if d.unlabeled_root:
            root = Path(d.unlabeled_root)
            if not root.is_dir():
                raise DataError(f"unlabeled image folder not found: {root}")
            extra = [(p, UNLABELED) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
            if not extra:
                raise DataError(f"unlabeled image folder {root} contains no images")
            unlabeled = FileDataset(
                extra, channels=d.channels, size=d.image_size, augment=d.augment, seed=self.seed
            )
            train = _Concat(train, unlabeled)
        self._splits = {"train": train, "val": val}
        return self._splits

    def build_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        return self._load()[split]

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        self._load()
        return {
            **options,
            "num_classes": len(self.labels),
            "in_channels": self.data.channels,
            "image_size": self.data.image_size,
        }

    # ------------------------------------------------------------ training

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: Any
    ) -> dict[str, torch.Tensor]:
        image = self._normalize(batch["image"])
        logits = models[stage.model](image).float()
        num_classes = len(self.labels)
        label_logits, kd_logits = logits, logits
        if logits.shape[-1] == 2 * num_classes:  # a dual-head student (DHO)
            label_logits, kd_logits = logits.split(num_classes, dim=-1)
        labels = self._visible_labels(stage, batch)
        if bool((labels == UNLABELED).all()):
            ce = label_logits.sum() * 0.0  # keeps the graph; an all-unlabeled batch has no CE
        else:
            ce = F.cross_entropy(label_logits, labels, ignore_index=UNLABELED)
        terms = {"ce": ce}
        if stage.role == "student":
            teacher_logits = ctx.teacher_outputs(batch)["logits"]
            ctx.expose("logits", kd_logits)
            ctx.expose("logits", teacher_logits, side="teacher")
        return terms  # the engine adds the KD terms of the recipe's losses

    def train_indices(self, stage: StageConfig) -> list[int] | None:
        """A stage without teachers can learn only from labels: with ``labeled_fraction`` < 1 it
        draws its batches from the labelled subset, so a supervised baseline gets full batches
        of labelled images for the same number of steps (not 90% ignored samples)."""
        fraction = self.stage_options(stage).labeled_fraction
        if fraction >= 1.0 or stage.teachers:
            return None
        return torch.nonzero(self._labeled_mask(fraction)).flatten().tolist()

    def _labeled_mask(self, fraction: float) -> torch.Tensor:
        n = len(self.build_dataset("train"))  # type: ignore[arg-type]
        key = (n, fraction)
        if key not in self._labeled_masks:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + 4242))
            mask = torch.zeros(n, dtype=torch.bool)
            mask[order[: max(1, int(round(n * fraction)))]] = True
            self._labeled_masks[key] = mask
        return self._labeled_masks[key]

    def _visible_labels(self, stage: StageConfig, batch: dict[str, Any]) -> torch.Tensor:
        """The batch's labels, hidden (set to UNLABELED) outside the stage's labelled subset.

        ``stages[].options.labeled_fraction`` (default 1.0) keeps labels for a fixed, seeded
        subset of the training samples: the classic semi-supervised regime where a teacher
        (trained elsewhere, on more labels) teaches from every image."""
        options = self.stage_options(stage)
        labels = batch["label"]
        if options.labeled_fraction >= 1.0:
            return labels
        keep = self._labeled_mask(options.labeled_fraction)[batch["index"].cpu()].to(labels.device)
        return torch.where(keep, labels, torch.full_like(labels, UNLABELED))

    def _normalize(self, image: torch.Tensor) -> torch.Tensor:
        """Training inputs: [0, 1] pixels normalised as the exported graph does inside."""
        return (image - self.data.mean) / self.data.std

    def _teacher_input(self, teacher: nn.Module, image: torch.Tensor) -> torch.Tensor:
        if getattr(teacher, "kdtool_source", None) in EXTERNAL_SOURCES:
            return image
        return self._normalize(image)

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        image = batch["image"]
        logits = torch.stack([t(self._teacher_input(t, image)).float() for t in teachers.values()]).mean(0)
        return {"logits": logits}

    def check_teacher(self, stage: StageConfig, name: str, teacher: nn.Module) -> None:
        """The teacher must take the data's images and predict the data's classes, in order."""
        self._load()
        d = self.data
        expected = (d.channels, d.image_size, d.image_size)
        where = getattr(teacher, "path", None) or name
        meta = getattr(teacher, "input_meta", None)
        if meta:
            shape = meta[0][1]
            fixed = tuple(s for s in shape[1:]) if len(shape) == 4 else None
            if fixed is None or any(
                isinstance(a, int) and a != b for a, b in zip(fixed, expected, strict=True)
            ):
                raise DataError(
                    f"teacher {name!r} ({where}) takes input {list(shape)}, but the data gives images of shape "
                    f"{['batch', *expected]} (data.channels={d.channels}, data.image_size={d.image_size})"
                )
        labels = getattr(teacher, "labels", None)
        if labels is not None and list(labels) != list(self.labels):
            raise DataError(
                f"teacher {name!r} ({where}) was trained with labels {labels}, but the data's labels are {self.labels}",
                hint="set data.labels to the teacher's label order",
            )
        sample = torch.stack([self.build_dataset("val")[i]["image"] for i in range(2)])
        device = next((p.device for p in teacher.parameters()), torch.device("cpu"))
        try:
            with torch.no_grad():
                out = teacher(self._teacher_input(teacher, sample.to(device)))
        except Exception as exc:
            raise DataError(
                f"teacher {name!r} ({where}) cannot take the data's images of shape {['batch', *expected]}: "
                f"{str(exc).splitlines()[0][:200]}"
            ) from None
        out = out[0] if isinstance(out, tuple | list) else out
        if out.ndim != 2 or out.shape[-1] != len(self.labels):
            raise DataError(
                f"teacher {name!r} ({where}) predicts {out.shape[-1] if out.ndim else '?'} classes "
                f"(output shape {list(out.shape)}), but the data has {len(self.labels)} classes: {self.labels}"
            )

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        return not self.data.augment

    # ------------------------------------------------------------ evaluation

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        dataset = self.build_dataset(split)
        if split == "train":
            # Training images as they are (the engine's tune split): labelled part, no augmentation.
            dataset = dataset.first if isinstance(dataset, _Concat) else dataset
            augment, dataset.augment = dataset.augment, False  # type: ignore[attr-defined]
            try:
                return self._score(predictor, dataset, limit)
            finally:
                dataset.augment = augment  # type: ignore[attr-defined]
        return self._score(predictor, dataset, limit)

    def _score(
        self, predictor: Predictor, dataset: Dataset[dict[str, Any]], limit: int | None
    ) -> dict[str, float]:
        n = len(dataset) if limit is None else min(limit, len(dataset))  # type: ignore[arg-type]
        correct = 0
        nll = 0.0
        batch = 64  # within the export spec's batch axis (max 64), so every runtime takes it
        for start in range(0, n, batch):
            items = [dataset[i] for i in range(start, min(n, start + batch))]
            images = torch.stack([it["image"] for it in items])
            labels = torch.tensor([it["label"] for it in items])
            logits = predictor(images)[0].float()
            correct += int((logits.argmax(-1) == labels).sum())
            nll += float(F.cross_entropy(logits, labels, reduction="sum"))
        return {"accuracy": correct / max(1, n), "nll": nll / max(1, n)}

    # ------------------------------------------------------------ export

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        self._load()
        d = self.data
        size = d.image_size
        module = Normalized(model, d.mean, d.std).eval()

        def calibration_inputs(n: int) -> Iterable[tuple[torch.Tensor, ...]]:
            train = self.build_dataset("train")
            for i in range(min(n, len(train))):  # type: ignore[arg-type]
                yield (train[i]["image"].unsqueeze(0),)

        return ExportSpec(
            task=self.name,
            model_name=model_name,
            graphs=[
                GraphSpec(
                    name="model",
                    module=module,
                    inputs=[
                        TensorSpec("image", ("batch", d.channels, size, size), description="pixels in [0, 1]")
                    ],
                    outputs=[TensorSpec("logits", ("batch", len(self.labels)), role="output")],
                    dynamic_axes={"batch": DynamicAxis(1, 1, 64)},
                    calibration_inputs=calibration_inputs,
                )
            ],
            metadata=DeployMetadata(
                task=self.name,
                labels=list(self.labels),
                preprocessing=ImagePreprocessing(
                    size=[size, size],
                    channels="L" if d.channels == 1 else "RGB",
                    scale=1 / 255,
                    normalization="inside",  # the graph computes (x - mean) / std
                    mean=d.mean,
                    std=d.std,
                ),
                postprocessing=ClassPostprocessing(kind="softmax_argmax"),
            ),
        )

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        pre = metadata["preprocessing"]
        labels = metadata.get("labels") or []
        channels = 1 if pre.get("channels") == "L" else 3
        size = int(pre["size"][0])
        results = []
        for path in inputs:
            image = load_image(path, channels, size).unsqueeze(0)
            probs = torch.softmax(predictor(image)[0].float(), -1)[0]
            top = torch.topk(probs, k=min(3, probs.numel()))
            results.append(
                {
                    "input": str(path),
                    "label": labels[int(top.indices[0])] if labels else int(top.indices[0]),
                    "top": [
                        {"label": labels[int(i)] if labels else int(i), "p": round(float(p), 4)}
                        for p, i in zip(top.values, top.indices, strict=True)
                    ],
                }
            )
        return results


class _Concat(Dataset[dict[str, Any]]):
    """Two datasets as one, with indices renumbered and set_epoch forwarded."""

    def __init__(self, first: Dataset[dict[str, Any]], second: Dataset[dict[str, Any]]) -> None:
        self.first, self.second = first, second
        self.split = len(first)  # type: ignore[arg-type]

    def set_epoch(self, epoch: int) -> None:
        for part in (self.first, self.second):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)

    def __len__(self) -> int:
        return self.split + len(self.second)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.first[index] if index < self.split else self.second[index - self.split]
        return {**item, "index": index}
