"""The conformance kit's own reference task: a three-class classifier of synthetic 8x8 images.

:mod:`kdtool.testing` trains and exports this task to check an exporter through the real
export driver, so the kit depends on no built-in plugin (blocking or uninstalling
``kdtool_classification`` leaves it working). It is registered only in the plugin manager the
kit builds (:func:`with_reference_task`), never in ``kdtool plugins``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from kdtool.data import sample_rng
from kdtool.engine.context import StepContext
from kdtool.export.spec import DeployMetadata, DynamicAxis, ExportSpec, GraphSpec, TensorSpec
from kdtool.recipe import StageConfig
from kdtool.task import Predictor, PrimaryMetric, Split, Task

TASK = "kdtool_conformance"
ARCH = "kdtool_conformance_net"
LABELS = ["top", "left", "diagonal"]
_SIZES = {"train": 96, "val": 48}


class ReferenceNet(nn.Module):
    """A small convolutional classifier: conv, batch norm, ReLU, pooling, linear head."""

    def __init__(self, classes: int = 3, channels: int = 4) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU()
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, classes))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image))


def _pattern(label: int) -> np.ndarray:
    img = np.zeros((8, 8), dtype=np.float32)
    if label == 0:
        img[:4] = 1.0
    elif label == 1:
        img[:, :4] = 1.0
    else:
        np.fill_diagonal(img, 1.0)
    return img


class _Synthetic(Dataset[dict[str, Any]]):
    def __init__(self, split: Split, seed: int) -> None:
        self.n = _SIZES[split]
        self.seed = seed + (0 if split == "train" else 1_000)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, Any]:
        label = index % 3
        noise = sample_rng(self.seed, 0, index).normal(0.0, 0.3, size=(8, 8)).astype(np.float32)
        image = np.clip(_pattern(label) + noise, 0.0, 1.0)[None]
        return {"index": index, "image": torch.from_numpy(image), "label": label}


class ReferenceTask(Task):
    """Classify synthetic 8x8 images into three patterns; cross-entropy; accuracy."""

    name = TASK
    primary_metric = PrimaryMetric("accuracy", higher_is_better=True)
    description = "the conformance kit's reference classifier (synthetic data)"

    def build_dataset(self, split: Split) -> Dataset[dict[str, Any]]:
        return _Synthetic(split, self.seed)

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        return {"classes": len(LABELS), **options}

    def training_step(
        self, stage: StageConfig, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: StepContext
    ) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(models[stage.model](batch["image"]), batch["label"])}

    def evaluate(
        self, predictor: Predictor, split: Split = "val", *, limit: int | None = None
    ) -> dict[str, float]:
        data = self.build_dataset(split)
        n = len(data) if limit is None else min(limit, len(data))  # type: ignore[arg-type]
        items = [data[i] for i in range(n)]
        images = torch.stack([it["image"] for it in items])
        labels = torch.tensor([it["label"] for it in items])
        logits = predictor.graphs["model"](images)[0]
        return {"accuracy": float((logits.argmax(1) == labels).float().mean())}

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        module = model.eval()
        data = self.build_dataset("train")

        def calibration(n: int) -> Any:
            for i in range(n):
                yield (data[i % len(data)]["image"][None],)  # type: ignore[arg-type]

        return ExportSpec(
            task=TASK,
            model_name=model_name,
            graphs=[
                GraphSpec(
                    name="model",
                    module=module,
                    inputs=[TensorSpec("image", ("batch", 1, 8, 8), description="pixels in [0, 1]")],
                    outputs=[TensorSpec("logits", ("batch", len(LABELS)), role="output")],
                    dynamic_axes={"batch": DynamicAxis(1, 2, 8)},
                    calibration_inputs=calibration,
                )
            ],
            metadata=DeployMetadata(task=TASK, labels=list(LABELS), postprocessing={"kind": "argmax"}),
        )


def reference_recipe(runs_dir: str) -> dict[str, Any]:
    """A one-stage recipe of the reference task (four steps, a couple of seconds on a CPU)."""
    return {
        "name": "conformance",
        "task": {"name": TASK},
        "seed": 0,
        "device": "cpu",
        "runs_dir": runs_dir,
        "models": {"model": {"arch": ARCH}},
        "stages": [
            {"name": "model", "model": "model", "role": "teacher", "steps": 4, "batch_size": 16,
             "optimizer": {"name": "adamw", "lr": 0.01}},
        ],
        "checkpoint": {"every_steps": 0, "keep_last": 1},
        "logging": {"every_steps": 2, "progress": False},
    }  # fmt: skip


def plugin_module() -> types.ModuleType:
    """A plugin module registering the reference task and its architecture."""
    from kdtool.hookspecs import hookimpl

    module = types.ModuleType("kdtool_conformance_reference")

    def register_tasks(register: Any) -> None:
        register(TASK, ReferenceTask, description=ReferenceTask.description)

    def register_models(register: Any) -> None:
        register(ARCH, ReferenceNet, description="the conformance kit's reference classifier")

    module.register_tasks = hookimpl(register_tasks)  # type: ignore[attr-defined]
    module.register_models = hookimpl(register_models)  # type: ignore[attr-defined]
    return module


def with_reference_task(manager: Any) -> Any:
    """``manager`` with the reference task registered (added once; the global manager is
    never changed: a fresh manager is returned for it)."""
    from kdtool import plugins

    if TASK in manager.registries().tasks:
        return manager
    if manager is plugins._MANAGER:  # (never creates the global manager as a side effect)
        manager = plugins.PluginManager(warn=lambda _m: None)
    manager.register_module(plugin_module(), TASK)
    return manager
