"""Task ``facial_landmarks``: KD-Loss with a Tolerant and a Tough teacher (arXiv 2111.07047).

Stages (``stage.role`` and ``stage.options`` decide the loss):

- teacher, ``options: {target: soft}``: the Tolerant-Teacher, L2 on the ASM soft landmarks;
- teacher, ``options: {target: hard}``: the Tough-Teacher, L2 on the ground truth;
- student, two teachers (``options: {tolerant_teacher: NAME, tough_teacher: NAME}``): KD-Loss,
  terms ``main`` (weight 2 in the recipe), ``assist_tough`` and ``assist_tolerant`` (weight 1);
- baseline: the same student on the ground truth, no teachers, with a plain loss
  (``options.loss``: ``l2``, ``l1``, ``smooth_l1`` or ``wing``; the term has the loss's name).
  The embedded recipe uses the strongest of the four on a tune split
  (``bench/landmarks_baseline_loss.py``), so the student is compared to the best plain option.

Choices for the method's open points (all recipe options):

- loss frame: every loss is computed on ``u = (W/2 - x) / W`` (the authors' normalisation),
  which is also what the networks regress; the exported graph turns it back into crop pixels;
- plain losses are means over all coordinates in the normalised frame; smooth-L1's switch
  point (``smooth_l1_beta``) and Wing's ``w`` and ``epsilon`` (``wing_width``,
  ``wing_curvature``) are therefore fractions of the crop (defaults 0.01, 0.15 and 0.03: 0.64,
  9.6 and 1.9 pixels of a 64-pixel crop, near the Wing paper's 10 and 2);
- the shape model is fitted on the un-augmented training crops in that frame, without
  Procrustes alignment (``task.options.asm_align``), 97% variance, clip +-3 sqrt(lambda); the
  soft landmarks then follow each augmentation exactly like the ground truth;
- the synthetic default has optional annotation noise on the training labels
  (``data.synthetic.label_noise``, crop pixels), standing in for the human annotation noise
  of real sets that the soft landmarks are meant to absorb; validation labels are exact.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from torch.utils.data import Dataset

from kdtool.distill import PointSpec
from kdtool.errors import DataError, RecipeError
from kdtool.export.spec import (
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    ImagePreprocessing,
    QuantizationHints,
    TensorSpec,
)
from kdtool.recipe import LossTerm, StageConfig
from kdtool.run import Run
from kdtool.task import Predictor, PrimaryMetric, RoleSpec, Split, Task, TaskOptions
from kdtool_landmarks import metrics as M
from kdtool_landmarks.asm import ShapeModel, soft_landmarks
from kdtool_landmarks.datasets import (
    AugmentConfig,
    LandmarksDataset,
    Record,
    from_frame,
    load_300w,
    load_manifest,
    load_rgb,
    load_wflw,
)
from kdtool_landmarks.layouts import Layout, layout_for
from kdtool_landmarks.losses import plain_loss
from kdtool_landmarks.synth import SynthConfig, make_split

_300W_TRAIN = ["afw", "helen/trainset", "lfpw/trainset"]
_300W_VAL = ["helen/testset", "lfpw/testset", "ibug"]
_300W_GROUPS = {"common": ["helen/testset", "lfpw/testset"], "challenging": ["ibug"]}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LandmarksOptions(TaskOptions):
    """``task.options``: shape model and metric settings."""

    asm_variance: float = Field(default=0.97, gt=0, le=1, description="share of shape variance the PCA keeps")
    asm_clip: float = Field(default=3.0, gt=0, description="clip PCA coefficients to +-clip*sqrt(lambda)")
    asm_align: Literal["none", "procrustes"] = "none"
    nme_norm: Literal["inter_ocular", "box"] = "inter_ocular"
    failure_threshold: float = Field(default=0.1, gt=0)
    eval_batch_size: int = Field(default=200, ge=1)
    sheet_images: int = Field(default=24, ge=1)
    latency_runs: int = Field(default=30, ge=1)


class AugmentOptions(_Strict):
    enabled: bool = True
    flip: float = Field(default=0.5, ge=0, le=1)
    rotation_deg: float = Field(default=15.0, ge=0)
    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = Field(default=0.05, ge=0)
    brightness: float = Field(default=0.25, ge=0, lt=1)
    contrast: float = Field(default=0.25, ge=0, lt=1)
    saturation: float = Field(default=0.25, ge=0, lt=1)


class SyntheticOptions(_Strict):
    train_size: int = Field(default=3000, ge=2)
    val_size: int = Field(default=400, ge=1)
    seed: int | None = Field(default=None, description="face generator seed (default: the recipe's seed)")
    supersample: int = Field(default=3, ge=1, le=8)
    max_yaw_deg: float = 40.0
    max_pitch_deg: float = 20.0
    max_roll_deg: float = 25.0
    occluder_prob: float = Field(default=0.25, ge=0, le=1)
    max_blur: float = Field(default=1.0, ge=0)
    max_noise: float = Field(default=10.0, ge=0)
    label_noise: float = Field(
        default=0.0, ge=0, description="annotation noise on training points, crop pixels (std)"
    )


class LandmarksData(TaskOptions):
    """The recipe's ``data`` section."""

    source: Literal["synthetic", "300w", "wflw", "manifest"] = "synthetic"
    root: str | None = None
    train: list[str] | str | None = None
    val: list[str] | str | None = None
    images: str | None = Field(default=None, description="WFLW image folder (default: root/WFLW_images)")
    val_groups: dict[str, list[str]] | None = None
    layout: Literal["ibug68", "wflw98", "cofw29"] | None = None
    image_size: int = Field(default=64, ge=16)
    crop_from: Literal["auto", "box", "points"] = "auto"
    crop_margin: float = Field(default=0.15, ge=0)
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    augment: AugmentOptions = Field(default_factory=AugmentOptions)
    synthetic: SyntheticOptions = Field(default_factory=SyntheticOptions)
    limit_train: int | None = Field(default=None, ge=1)
    limit_val: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _sources(self) -> LandmarksData:
        if self.source in ("300w", "wflw") and not self.root:
            raise ValueError(f"source {self.source!r} needs 'root' (the dataset folder)")
        if self.source in ("wflw", "manifest") and not (self.train and self.val):
            raise ValueError(f"source {self.source!r} needs 'train' and 'val' (annotation files)")
        return self


class StageOptions(_Strict):
    """``stages[].options`` of this task."""

    target: Literal["hard", "soft"] = Field(
        default="hard", description="teacher/baseline target: ground truth or ASM soft landmarks"
    )
    loss: Literal["l2", "l1", "smooth_l1", "wing"] = Field(
        default="l2", description="plain loss of a teacher or baseline stage (its loss term has this name)"
    )
    smooth_l1_beta: float = Field(
        default=0.01,
        gt=0,
        description="smooth-L1 switch point, in the normalised frame (fraction of the crop)",
    )
    wing_width: float = Field(default=0.15, gt=0, description="Wing loss w, in the normalised frame")
    wing_curvature: float = Field(
        default=0.03, gt=0, description="Wing loss epsilon, in the normalised frame"
    )
    tolerant_teacher: str = "tolerant_teacher"
    tough_teacher: str = "tough_teacher"

    @field_validator("tolerant_teacher", "tough_teacher")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v:
            raise ValueError("empty teacher name")
        return v


_PLAIN = ("l2", "l1", "smooth_l1", "wing")
ROLES = {
    "teacher": RoleSpec(
        "L2 (or options.loss) on the ground truth (target: hard, the Tough-Teacher) or on the ASM "
        "soft landmarks (target: soft, the Tolerant-Teacher)",
        StageOptions,
        loss_slots=_PLAIN,
    ),
    "student": RoleSpec(
        "KD-Loss from a Tolerant and a Tough teacher (options.tolerant_teacher / tough_teacher)",
        StageOptions,
        loss_slots=("main", "assist_tough", "assist_tolerant"),
        teachers="required",
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        "the student on the ground truth with a plain loss (options.loss), no teachers",
        StageOptions,
        loss_slots=_PLAIN,
        baseline=True,
        deploy_rank=10,
    ),
}


class LandmarkOutput(nn.Module):
    """The deployable graph: normalised image -> (N, points, 2) crop pixel coordinates."""

    def __init__(self, net: nn.Module, num_points: int, size: int) -> None:
        super().__init__()
        self.net = net
        self.num_points = num_points
        self.size = size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        u = self.net(image).reshape(-1, self.num_points, 2)
        return self.size / 2 - u * self.size


class LandmarksTask(Task[LandmarksOptions, LandmarksData]):
    name = "facial_landmarks"
    predict_inputs = (
        "face crops as image files (PNG, JPEG, ...); prints the points, draws <name>_landmarks.png"
    )
    description = (
        "facial landmarks: KD-Loss from a Tolerant-Teacher (ASM soft landmarks) and a Tough-Teacher "
        "(ground truth) into a MobileNetV2 student; roles teacher (options.target hard|soft), student, baseline"
    )
    Options = LandmarksOptions
    DataOptions = LandmarksData
    roles = ROLES  # stage roles and their options, checked when the recipe loads
    primary_metric = PrimaryMetric("nme", higher_is_better=False)
    # The student's (B, N, 2) landmarks in the normalised frame with the ground truth attached,
    # and each KD-Loss teacher's: ``landmarks/tolerant`` and ``landmarks/tough``.
    distill_points = (
        PointSpec("landmarks", description="(B, N, 2) student landmarks, ground truth as target", sides=("student",)),
        PointSpec("landmarks", "tolerant", "(B, N, 2) Tolerant-Teacher landmarks", sides=("teacher",)),
        PointSpec("landmarks", "tough", "(B, N, 2) Tough-Teacher landmarks", sides=("teacher",)),
    )
    default_between = {"student": "landmarks", "teacher": "landmarks/tolerant"}

    options: LandmarksOptions
    data: LandmarksData

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._datasets: dict[str, LandmarksDataset] = {}
        self._layout: Layout | None = None
        self._soft: np.ndarray | None = None
        self.shape_model: ShapeModel | None = None
        self._val_cache: tuple[torch.Tensor, np.ndarray, list[str]] | None = None

    # ------------------------------------------------------------ data

    @property
    def size(self) -> int:
        return self.data.image_size

    @property
    def layout(self) -> Layout:
        if self._layout is None:
            self._load()
        assert self._layout is not None
        return self._layout

    def _records(self, split: str) -> list[Record]:
        d = self.data
        entries = d.train if split == "train" else d.val
        as_list = [entries] if isinstance(entries, str) else list(entries or [])
        if d.source == "300w":
            assert d.root is not None
            return load_300w(Path(d.root), as_list or (_300W_TRAIN if split == "train" else _300W_VAL))
        if d.source == "wflw":
            assert d.root is not None
            images = Path(d.images) if d.images else Path(d.root) / "WFLW_images"
            return [r for f in as_list for r in load_wflw(_under(d.root, f), images)]
        if d.source == "manifest":
            return [r for f in as_list for r in load_manifest(_under(d.root, f))]
        return self._synthetic(split)

    def _synthetic(self, split: str) -> list[Record]:
        s = self.data.synthetic
        cfg = SynthConfig(
            size=self.size,
            supersample=s.supersample,
            max_yaw_deg=s.max_yaw_deg,
            max_pitch_deg=s.max_pitch_deg,
            max_roll_deg=s.max_roll_deg,
            occluder_prob=s.occluder_prob,
            max_blur=s.max_blur,
            max_noise=s.max_noise,
        )
        seed = self.seed if s.seed is None else s.seed
        count = s.train_size if split == "train" else s.val_size
        key = hashlib.sha256(json.dumps([repr(cfg), seed, split, count, 1]).encode()).hexdigest()[:16]
        path = self.cache_dir / "landmarks_synth" / f"{split}_{key}.npz"
        images = points = None
        if path.exists():
            try:
                with np.load(path) as z:
                    images, points = z["images"], z["points"]
            except (OSError, ValueError, KeyError):
                images = None
        if images is None or points is None:
            images, points = make_split(seed, split, count, cfg)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp.npz")
            np.savez(tmp, images=images, points=points)
            tmp.replace(path)
        if split == "train" and s.label_noise > 0:
            rng = np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, 77]))
            points = points + rng.normal(0.0, s.label_noise, size=points.shape).astype(np.float32)
        return [Record(images[i], points[i], None, "synthetic") for i in range(count)]

    def _load(self) -> None:
        if self._datasets:
            return
        d = self.data
        crop: str = d.crop_from
        if crop == "auto":
            crop = {"synthetic": "full", "wflw": "box"}.get(d.source, "points")
        records = {split: self._records(split) for split in ("train", "val")}
        for split, limit in (("train", d.limit_train), ("val", d.limit_val)):
            if limit is not None:
                records[split] = records[split][:limit]
        counts = {len(r.points) for rs in records.values() for r in rs}
        if len(counts) != 1:
            raise DataError(
                f"the training and validation data mix point counts {sorted(counts)}; one layout per recipe"
            )
        try:
            self._layout = layout_for(d.layout, counts.pop())
        except ValueError as exc:
            raise DataError(str(exc)) from None
        margin = 0.0 if crop == "full" else d.crop_margin
        aug = d.augment
        augment = AugmentConfig(
            aug.enabled,
            aug.flip,
            aug.rotation_deg,
            aug.scale,
            aug.shift,
            aug.brightness,
            aug.contrast,
            aug.saturation,
        )
        for split in ("train", "val"):
            self._datasets[split] = LandmarksDataset(
                records[split],
                layout=self._layout,
                size=self.size,
                crop_source=crop,
                margin=margin,
                mean=d.mean,
                std=d.std,
                augment=augment if split == "train" else None,
                seed=self.seed,
            )

    def build_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        self._load()
        ds = self._datasets[split]
        if split == "train" and ds.soft is None:
            ds.set_soft(self._soft if self._soft is not None else self._fit_soft(ds)[0])
        return ds

    def _fit_soft(self, ds: LandmarksDataset) -> tuple[np.ndarray, ShapeModel]:
        o = self.options
        soft, model = soft_landmarks(ds.shapes(), o.asm_variance, o.asm_clip, o.asm_align)
        self.shape_model = model
        return soft, model

    def prepare(self, run_dir: Path) -> None:
        """Fit the shape model once per run and cache the soft landmarks in the run."""
        super().prepare(run_dir)
        self._load()
        ds = self._datasets["train"]
        folder = run_dir / "landmarks"
        soft_path, model_path = folder / "soft_landmarks.npy", folder / "shape_model.npz"
        if soft_path.exists() and model_path.exists():
            soft = np.load(soft_path)
            if soft.shape == (len(ds), self.layout.num_points, 2):
                self._soft, self.shape_model = soft, ShapeModel.load(model_path)
                ds.set_soft(soft)
                return
        soft, model = self._fit_soft(ds)
        folder.mkdir(parents=True, exist_ok=True)
        model.save(model_path)
        tmp = soft_path.with_name("soft_landmarks.tmp.npy")
        np.save(tmp, soft)
        tmp.replace(soft_path)
        info = {
            "components": model.num_components,
            "variance_kept": model.explained,
            "clip": model.clip,
            "align": self.options.asm_align,
            "mean_shift_px": float(
                np.abs(from_frame(soft, self.size) - from_frame(ds.shapes(), self.size)).mean()
            ),
        }
        (folder / "shape_model.json").write_text(json.dumps(info, indent=2))
        self._soft = soft
        ds.set_soft(soft)

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        return {**options, "num_points": self.layout.num_points, "input_size": self.size}

    # ------------------------------------------------------------ training

    def stage_options(self, stage: StageConfig) -> StageOptions:
        opts: StageOptions = super().stage_options(stage)  # validated once, at recipe load
        if stage.role == "student":
            names = [t.name for t in stage.teachers]
            for which in (opts.tolerant_teacher, opts.tough_teacher):
                if which not in names:
                    raise RecipeError(
                        f"stage {stage.name!r}: KD-Loss needs a Tolerant and a Tough teacher; {which!r} is not among "
                        f"the stage's teachers {names}",
                        hint="set stages[].options.tolerant_teacher / tough_teacher to the teachers' names",
                    )
        return opts

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: Any
    ) -> dict[str, torch.Tensor]:
        opts = self.stage_options(stage)
        gt = batch["points"]
        pred = models[stage.model](batch["image"]).float().reshape(gt.shape)
        if stage.role == "student":
            teach = ctx.teacher_outputs(batch)
            ctx.expose("landmarks", pred, target=gt)
            ctx.expose("landmarks/tolerant", teach["tolerant"], side="teacher")
            ctx.expose("landmarks/tough", teach["tough"], side="teacher")
            return {}  # the engine adds the recipe's KD terms (default: KD-Loss)
        target = batch["soft"] if opts.target == "soft" else gt
        value = plain_loss(
            opts.loss,
            pred,
            target,
            smooth_l1_beta=opts.smooth_l1_beta,
            wing_width=opts.wing_width,
            wing_curvature=opts.wing_curvature,
        )
        return {opts.loss: value}

    def default_distill(self, stage: StageConfig) -> list[LossTerm]:
        """A student stage trains on KD-Loss when its recipe lists no KD loss."""
        return [LossTerm(name="main", loss="landmarks_kd_loss")] if stage.role == "student" else []

    def teacher_outputs(
        self, stage: StageConfig, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        opts = self.stage_options(stage)
        shape = batch["points"].shape
        return {
            "tolerant": teachers[opts.tolerant_teacher](batch["image"]).float().reshape(shape),
            "tough": teachers[opts.tough_teacher](batch["image"]).float().reshape(shape),
        }

    def teacher_cache_safe(self, stage: StageConfig) -> bool:
        return not self.data.augment.enabled

    # ------------------------------------------------------------ evaluation

    def _val_arrays(self, split: Split, limit: int | None) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        if split == "val" and self._val_cache is not None and limit is None:
            return self._val_cache
        self._load()
        ds = self._datasets[split]
        n = len(ds) if limit is None else min(limit, len(ds))
        items = [ds[i] if split == "val" else _plain(ds, i) for i in range(n)]
        images = torch.stack([it["image"] for it in items])
        gt = from_frame(torch.stack([it["points"] for it in items]).numpy(), self.size)
        groups = [ds.records[i].group for i in range(n)]
        out = (images, gt, groups)
        if split == "val" and limit is None:
            self._val_cache = out
        return out

    def _predict(self, predictor: Predictor, images: torch.Tensor) -> np.ndarray:
        bs = self.options.eval_batch_size
        outs = [predictor(images[i : i + bs])[0].float().numpy() for i in range(0, len(images), bs)]
        return np.concatenate(outs).reshape(len(images), self.layout.num_points, 2)

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        images, gt, groups = self._val_arrays(split, limit)
        pred = self._predict(predictor, images)
        nme = M.nme_per_image(pred, gt, self.layout, self.options.nme_norm)
        result = M.summarise(nme, self.options.failure_threshold)
        group_dirs = self.data.val_groups or (_300W_GROUPS if self.data.source == "300w" else {})
        for name, dirs in group_dirs.items():
            mask = np.asarray([g in dirs for g in groups])
            if mask.any():
                result[f"nme_{name}"] = float(nme[mask].mean() * 100)
        return result

    # ------------------------------------------------------------ export

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        self._load()
        size, n = self.size, self.layout.num_points
        module = LandmarkOutput(model, n, size).eval()
        d = self.data

        def calibration_inputs(count: int) -> Iterable[tuple[torch.Tensor, ...]]:
            images = self._val_arrays("train", min(count, len(self._datasets["train"])))[0]
            for i in range(len(images)):
                yield (images[i : i + 1],)

        layout = self.layout
        return ExportSpec(
            task=self.name,
            model_name=model_name,
            graphs=[
                GraphSpec(
                    name="model",
                    module=module,
                    inputs=[
                        TensorSpec(
                            "image",
                            ("batch", 3, size, size),
                            description="face crop, RGB, (x/255 - mean) / std",
                        )
                    ],
                    outputs=[
                        TensorSpec(
                            "landmarks",
                            ("batch", n, 2),
                            role="output",
                            description="x, y in crop pixels (continuous)",
                        )
                    ],
                    dynamic_axes={"batch": DynamicAxis(1, 1, 64)},
                    quantization=QuantizationHints(preferred="static", exclude_nodes=["head/fc"]),
                    calibration_inputs=calibration_inputs,
                )
            ],
            metadata=DeployMetadata(
                task=self.name,
                preprocessing=ImagePreprocessing(
                    size=[size, size],
                    channels="RGB",
                    scale=1 / 255,
                    mean=list(d.mean),
                    std=list(d.std),
                    normalization="outside",  # the app computes (x / 255 - mean) / std
                    crop=f"square face box enlarged by {d.crop_margin} per side, resized to {size}x{size}",
                ),
                postprocessing={
                    "kind": "landmarks",
                    "num_points": n,
                    "coordinates": "crop pixels, continuous (pixel i spans [i, i+1])",
                    "layout": layout.name,
                    "flip_permutation": list(layout.flip_perm) if layout.flip_perm else None,
                    "eye_corners": list(layout.eye_corners) if layout.eye_corners else None,
                },
            ),
        )

    # ------------------------------------------------------------ deployment

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        """Each input is taken as a face crop: resized to the model's size, normalised as the
        manifest says; points are returned in the input image's pixels (0-based centres) and
        drawn into ``out_dir/<name>_landmarks.png``."""
        pre = metadata["preprocessing"]
        size = int(pre["size"][0])
        mean = torch.tensor(pre.get("mean", [0.5] * 3), dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(pre.get("std", [0.5] * 3), dtype=torch.float32).view(3, 1, 1)
        out_dir.mkdir(parents=True, exist_ok=True)
        results = []
        for path in inputs:
            img = load_rgb(path)
            w, h = img.size
            x = torch.from_numpy(
                np.asarray(img.resize((size, size), resample=_bilinear()), dtype=np.float32).copy()
            )
            x = ((x.permute(2, 0, 1) / 255.0 - mean) / std).unsqueeze(0)
            pts = predictor(x)[0].float().numpy()[0]
            pts_img = pts * np.array([w / size, h / size]) - 0.5
            drawn = out_dir / f"{path.stem}_landmarks.png"
            M.draw_points(img, pts_img + 0.5, drawn)
            results.append(
                {
                    "input": str(path),
                    "points": [[round(float(a), 2), round(float(b), 2)] for a, b in pts_img],
                    "figure": str(drawn),
                }
            )
        return results

    def write_figures(self, predictor: Predictor, model_name: str, out_dir: Path) -> list[Path]:
        """A CED plot of every model scored so far in ``out_dir`` and a sheet of this model's
        validation predictions (green: truth, red: prediction)."""
        images, gt, _ = self._val_arrays("val", None)
        pred = self._predict(predictor, images)
        nme = M.nme_per_image(pred, gt, self.layout, self.options.nme_norm)
        out_dir.mkdir(parents=True, exist_ok=True)
        np.save(out_dir / f"landmarks_nme_{model_name}.npy", nme)
        curves = {
            p.stem.removeprefix("landmarks_nme_"): np.load(p)
            for p in sorted(out_dir.glob("landmarks_nme_*.npy"))
        }
        ced = M.plot_ced(
            curves, out_dir / "landmarks_ced.png", self.options.failure_threshold, self.options.nme_norm
        )
        k = min(self.options.sheet_images, len(images))
        mean = torch.tensor(self.data.mean).view(1, 3, 1, 1)
        std = torch.tensor(self.data.std).view(1, 3, 1, 1)
        pix = ((images[:k] * std + mean).clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()
        sheet = M.draw_sheet(list(pix), pred[:k], gt[:k], out_dir / f"landmarks_samples_{model_name}.png")
        return [ced, sheet]

    # ------------------------------------------------------------ run summary

    def on_run_end(self, run: Run) -> None:
        """Parameters and CPU latency (batch 1) of every model of the run, the figures, and the
        student-vs-baseline NME difference, as ``summary.json``'s ``landmarks`` entry."""
        from kdtool_landmarks.models import MODELS

        run_dir = run.run_dir
        models = run.reload().get("models", {})
        out: dict[str, Any] = {"models": {}, "figures": []}
        fig_dir = run_dir / "figures"
        for stage, entry in models.items():
            try:
                config = json.loads((run_dir / entry["config"]).read_text())
                factory = MODELS[config["arch"]][0]
            except (OSError, ValueError, KeyError):
                continue
            from safetensors.torch import load_file

            net = factory(**config.get("options", {}))
            if config.get("quantization_aware"):  # a QAD stage: its fake quantizers, then its weights
                from kdtool.quant import apply_plan

                apply_plan(net, config["quantization_aware"], fold=False)
            net.load_state_dict(load_file(str(run_dir / entry["weights"])))
            net.eval()
            predictor = self.predictor(net, stage, "cpu")
            out["models"][stage] = {
                "role": entry.get("role"),
                "params": sum(p.numel() for p in net.parameters()),
                "cpu_latency_ms": round(cpu_latency_ms(net, self.size, self.options.latency_runs), 3),
                "nme": entry.get("metrics", {}).get("nme"),
            }
            self.write_figures(predictor, stage, fig_dir)
        out["figures"] = (
            sorted({str(p.relative_to(run_dir)) for p in fig_dir.glob("*.png")}) if fig_dir.exists() else []
        )
        for entry in models.values():
            if entry.get("role") == "baseline" and entry.get("baseline_for") in models:
                student = models[entry["baseline_for"]].get("metrics", {}).get("nme")
                base = entry.get("metrics", {}).get("nme")
                if student is not None and base is not None:
                    out.setdefault("kd_gain", {})[entry["baseline_for"]] = {
                        "student_nme": student,
                        "baseline_nme": base,
                        "nme_reduction": round(base - student, 4),
                    }
        run.update_summary(landmarks=out)


def cpu_latency_ms(net: nn.Module, size: int, runs: int = 30) -> float:
    """Median wall time of one forward pass (batch 1) on the CPU, with the current threads."""
    net = net.eval().cpu()
    x = torch.randn(1, 3, size, size)
    times = []
    with torch.no_grad():
        for _ in range(3):
            net(x)
        for _ in range(runs):
            t = time.perf_counter()
            net(x)
            times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def _plain(ds: LandmarksDataset, index: int) -> dict[str, Any]:
    """An item of ``ds`` without augmentation (calibration data for export)."""
    aug, ds.augment = ds.augment, None
    try:
        return ds[index]
    finally:
        ds.augment = aug


def _under(root: str | None, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() or root is None else Path(root) / p


def _bilinear() -> Any:
    from PIL import Image

    return Image.Resampling.BILINEAR
