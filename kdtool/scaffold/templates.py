"""Templates for ``kdtool plugins new``: one plugin distribution per kind, as ``string.Template``
text (``${module}``, ``${name}``, ... are filled in; ``$$`` is a literal dollar sign).

Each kind's code is a small, working plugin that passes the conformance kit as generated, so
an author starts from green tests and edits from there.
"""

from __future__ import annotations

PYPROJECT = """\
# A kdtool plugin. The [project.entry-points.kdtool] table is what makes kdtool find it:
# after `pip install -e .` it is listed by `kdtool plugins`.
[build-system]
requires = ["setuptools>=77"]
build-backend = "setuptools.build_meta"

[project]
name = "${dist}"
version = "0.1.0"
description = "${description}"
readme = "README.md"
license-files = ["LICENSE"]
requires-python = ">=3.11"
dependencies = ["kdtool>=${kdtool_version}"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.kdtool]
${plugin} = "${module}"

[tool.setuptools]
packages = ["${module}"]
"""

LICENSE = """\
TODO: choose a license for ${dist} and put its text here (for example Apache-2.0 or MIT),
then add `license = "<SPDX id>"` to the [project] table of pyproject.toml.
"""

GITIGNORE = """\
__pycache__/
*.egg-info/
build/
dist/
runs/
.pytest_cache/
"""

README = """\
# ${dist}

A [kdtool](https://pypi.org/project/kdtool/) plugin: ${description}.

It registers the ${kind_words} `${name}`${extra_registrations}.

## Install and check

```bash
pip install -e ".[test]"
kdtool plugins          # lists plugin '${plugin}' with status ok
python -m pytest        # runs kdtool's conformance kit on it
```
${usage}
## Publish

The entry point in `pyproject.toml` is all kdtool needs:

```toml
[project.entry-points.kdtool]
${plugin} = "${module}"
```

Build and upload with `python -m build` and `twine upload dist/*`; users then
`pip install ${dist}`. `KDTOOL_PLUGIN_API` in `${module}/__init__.py` says which kdtool plugin
API it was written for; a kdtool with another major API version lists it as incompatible
instead of loading it. Users can block it with `KDTOOL_DISABLE_PLUGINS=${plugin}`.
"""

USAGE = {
    "loss": """
## Use

In a recipe stage: `losses: [{name: kd, loss: ${name}, weight: 1.0, temperature: 2.0}]`. The loss
declares the distillation point kinds it `accepts` (logits, sequence posteriors), so it works for
every task that exposes one of them; `between: {student: <point>, teacher: <point>}` picks other
points than the task's default pairing (see docs/writing-a-kd-loss.md).
""",
    "task": """
## Use

```bash
kdtool distill recipes/${name}.yaml --max-steps 20
kdtool export --target onnx
```
""",
    "exporter": """
## Use

```bash
kdtool targets                      # lists ${name} and ${name}-cpu
kdtool export RUN --target ${name}  # RUN: a finished `kdtool distill` run (default: the latest)
```
""",
    "target": """
## Use

```bash
kdtool targets                      # lists ${name}
kdtool export RUN --target ${name}
```
""",
}

# --------------------------------------------------------------------------- loss

LOSS_MODULE = '''\
"""kdtool plugin ${plugin}: the ``${name}`` distillation loss.

A recipe stage uses it as ``losses: [{name: kd, loss: ${name}, temperature: 2.0}]``; the
engine builds it, moves it to the device, optimises its parameters (if any) with the stage and
calls it on every pair of distillation points whose kinds it ``accepts``, for any task.
Replace the soft-target KL below with your loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from kdtool import TensorSpec, hookimpl
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "${api}"


class ${cls}Loss(nn.Module):
    """Soft-target KL(teacher_T || student_T) over the last axis, times T^2 (Hinton et al.).

    The teacher's logits are constants (detached); every argument has a default so a recipe
    may omit it.
    """

    # The distillation point kinds it compares (kdtool.distill.POINT_KINDS): a recipe may pair
    # it with any task's points of these kinds; others are refused when the recipe loads.
    accepts = ("logits", "sequence_posteriors")

    # The shapes of forward's inputs: documentation for users, and what
    # kdtool.testing.check_loss feeds it (named axes get small sizes).
    input_specs = (
        TensorSpec("student_logits", ("batch", "classes")),
        TensorSpec("teacher_logits", ("batch", "classes")),
    )

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = temperature

    def forward(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        # mask: the valid leading positions (e.g. frames of a sequence), given by the engine
        # from the point's lengths; None for plain (batch, classes) logits.
        t = self.temperature
        log_q = F.log_softmax(student_logits.float() / t, dim=-1)
        log_p = F.log_softmax(teacher_logits.detach().float() / t, dim=-1)
        per_position = (log_p.exp() * (log_p - log_q)).sum(-1)
        if mask is not None:
            per_position = per_position[mask]
        return per_position.mean() * t * t


@hookimpl
def register_losses(register: Register) -> None:
    register("${name}", ${cls}Loss, description="soft-target KL at a temperature (template)")
'''

LOSS_TEST = '''\
"""Conformance and behaviour tests for the ${name} loss."""

from __future__ import annotations

import torch

from kdtool.testing import check_loss, check_plugin
from ${module} import ${cls}Loss


def test_plugin_is_installed_and_registers_the_loss() -> None:
    report = check_plugin("${plugin}")
    assert any("${name}" in line for line in report.passed)


def test_loss_passes_the_conformance_kit() -> None:
    check_loss(${cls}Loss)
    check_loss("${name}")  # the registered object, as a recipe finds it


def test_loss_is_zero_when_student_equals_teacher() -> None:
    logits = torch.randn(3, 5)
    assert float(${cls}Loss()(logits, logits)) < 1e-6
    assert float(${cls}Loss()(logits, torch.zeros(3, 5))) > 0
'''

# --------------------------------------------------------------------------- task

TASK_MODULE = '''\
"""kdtool plugin ${plugin}: the ``${name}`` task and its ``${name}_mlp`` architecture.

A small, complete domain to start from: classify feature vectors drawn around fixed class
centres (synthetic, so it runs offline in seconds). Replace the data, the model and the
metric with your domain's; keep the contracts (see docs/plugins.md of kdtool):
dataset items are dicts with their position as ``"index"``, ``training_step`` returns named
unweighted scalar losses, ``evaluate`` only calls the predictor (so it also scores exported
artifacts) and returns the primary metric, ``export_spec`` wraps the model in exactly the
deploy interface.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.utils.data import Dataset

from kdtool import (
    DeployMetadata,
    DynamicAxis,
    ExportSpec,
    GraphSpec,
    Predictor,
    PrimaryMetric,
    RoleSpec,
    Task,
    TaskOptions,
    TensorSpec,
    hookimpl,
)
from kdtool.distill import PointSpec
from kdtool.errors import DataError
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "${api}"


class ${cls}Data(TaskOptions):
    """The recipe's ``data`` section (unknown keys are errors)."""

    num_train: int = Field(default=512, ge=1)
    num_val: int = Field(default=128, ge=1)
    features: int = Field(default=8, ge=1)
    classes: int = Field(default=4, ge=2)
    noise: float = Field(default=1.0, ge=0)


def make_samples(n: int, data: ${cls}Data, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` vectors around fixed class centres (the same centres for every split)."""
    centres = torch.randn(data.classes, data.features, generator=torch.Generator().manual_seed(1234)) * 2
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, data.classes, (n,), generator=g)
    return centres[labels] + data.noise * torch.randn(n, data.features, generator=g), labels


class VectorDataset(Dataset[dict[str, Any]]):
    def __init__(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "features": self.features[index], "label": int(self.labels[index])}


class ${cls}MLP(nn.Module):
    """A multilayer perceptron classifier."""

    def __init__(self, features: int, classes: int, hidden: int = 32, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        self.net = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class ${cls}StageOptions(TaskOptions):
    """``stages[].options`` (validated once, when the recipe loads; unknown keys are errors)."""

    label_smoothing: float = Field(default=0.0, ge=0, lt=1, description="cross-entropy label smoothing")


# The stage roles this task trains (``kdtool recipes roles ${name}`` lists them).
ROLES = {
    "teacher": RoleSpec("cross-entropy on the labels", ${cls}StageOptions, loss_slots=("ce",)),
    "student": RoleSpec(
        "cross-entropy + each registered loss in `losses` on the teachers' mean logits",
        ${cls}StageOptions,
        loss_slots=("ce",),
        teachers="required",
        deploy_rank=30,
    ),
    "baseline": RoleSpec(
        "the student's architecture on the labels alone (a control)",
        ${cls}StageOptions,
        loss_slots=("ce",),
        teachers="none",
        baseline=True,
        deploy_rank=10,
    ),
}


class ${cls}Task(Task[TaskOptions, ${cls}Data]):
    name = "${name}"
    description = "${name}: distil a classifier of feature vectors (template task)"
    DataOptions = ${cls}Data
    roles = ROLES
    primary_metric = PrimaryMetric("accuracy", higher_is_better=True)
    # What the models expose for distillation, and the pairing a KD loss entry without
    # `between` uses (any registered loss that accepts "logits" works here).
    distill_points = (PointSpec("logits", description="(batch, classes) class logits"),)
    default_between = {"student": "logits", "teacher": "logits"}

    data: ${cls}Data

    def __init__(self, options: TaskOptions, data: TaskOptions, *, seed: int, cache_dir: Path) -> None:
        super().__init__(options, data, seed=seed, cache_dir=cache_dir)
        self._splits: dict[str, VectorDataset] = {}

    def build_dataset(self, split: str) -> VectorDataset:
        if split not in self._splits:
            n = self.data.num_train if split == "train" else self.data.num_val
            self._splits[split] = VectorDataset(*make_samples(n, self.data, seed=1 if split == "train" else 2))
        return self._splits[split]

    def model_options(self, model_name: str, arch: str, options: dict[str, Any]) -> dict[str, Any]:
        # What the data decides goes into the model's saved config, so it rebuilds alone.
        return {**options, "features": self.data.features, "classes": self.data.classes}

    def training_step(
        self, stage: Any, models: Mapping[str, nn.Module], batch: dict[str, Any], ctx: Any
    ) -> dict[str, torch.Tensor]:
        options = self.stage_options(stage)  # the validated ${cls}StageOptions
        logits = models[stage.model](batch["features"])
        ce = F.cross_entropy(logits.float(), batch["label"], label_smoothing=options.label_smoothing)
        terms = {"ce": ce}
        if stage.role == "student":  # a student has teachers: checked when the recipe loads
            # Expose the distillation points; the engine evaluates every KD loss of the recipe
            # on them (the task never names a loss).
            ctx.expose("logits", logits)
            ctx.expose("logits", ctx.teacher_outputs(batch)["logits"], side="teacher")
        return terms

    def teacher_outputs(
        self, stage: Any, teachers: Mapping[str, nn.Module], batch: dict[str, Any]
    ) -> dict[str, torch.Tensor]:
        return {"logits": torch.stack([t(batch["features"]).float() for t in teachers.values()]).mean(0)}

    def teacher_cache_safe(self, stage: Any) -> bool:
        return True  # no augmentation or noise reaches the teacher

    def evaluate(self, predictor: Predictor, split: str = "val", *, limit: int | None = None) -> dict[str, float]:
        dataset = self.build_dataset(split)
        n = len(dataset) if limit is None else min(limit, len(dataset))
        logits = predictor(dataset.features[:n])[0].float()
        labels = dataset.labels[:n]
        return {
            "accuracy": float((logits.argmax(-1) == labels).float().mean()) if n else 0.0,
            "nll": float(F.cross_entropy(logits, labels)) if n else 0.0,
        }

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        d = self.data

        def calibration_inputs(n: int) -> Iterator[tuple[torch.Tensor, ...]]:
            train = self.build_dataset("train")
            for i in range(min(n, len(train))):
                yield (train.features[i : i + 1],)

        return ExportSpec(
            task=self.name,
            model_name=model_name,
            graphs=[
                GraphSpec(
                    name="model",
                    module=model.eval(),
                    inputs=[TensorSpec("features", ("batch", d.features))],
                    outputs=[TensorSpec("logits", ("batch", d.classes), role="output")],
                    dynamic_axes={"batch": DynamicAxis(1, 1, 256)},
                    calibration_inputs=calibration_inputs,
                )
            ],
            metadata=DeployMetadata(
                task=self.name,
                labels=[f"class_{i}" for i in range(d.classes)],
                preprocessing={"kind": "vector", "features": d.features},
                postprocessing={"kind": "softmax_argmax"},
            ),
        )

    @classmethod
    def predict_files(
        cls, predictor: Predictor, metadata: dict[str, Any], inputs: list[Path], out_dir: Path
    ) -> list[dict[str, Any]]:
        """Each input file holds one vector: numbers separated by spaces, commas or newlines."""
        features = int(metadata["preprocessing"]["features"])
        labels = metadata.get("labels") or []
        results = []
        for path in inputs:
            text = Path(path).read_text().replace(",", " ").split()
            try:
                vector = torch.tensor([float(v) for v in text]).unsqueeze(0)
            except ValueError as exc:
                raise DataError(f"{path}:1: not a list of numbers ({exc})") from None
            if vector.shape[1] != features:
                raise DataError(f"{path}: expected {features} numbers, found {vector.shape[1]}")
            probs = torch.softmax(predictor(vector)[0].float(), -1)[0]
            best = int(probs.argmax())
            label = labels[best] if labels else best
            results.append({"input": str(path), "label": label, "p": round(float(probs[best]), 4)})
        return results


@hookimpl
def register_tasks(register: Register) -> None:
    register("${name}", ${cls}Task, description=${cls}Task.description)


@hookimpl
def register_models(register: Register) -> None:
    register("${name}_mlp", ${cls}MLP, description="MLP classifier of feature vectors")
'''

TASK_RECIPE = """\
# ${name}: distil a 2-layer MLP teacher into a slim MLP student on synthetic vectors.
name: ${name}
description: Soft-target KD on synthetic feature vectors (template recipe).
task:
  name: ${name}
seed: 0
device: auto
data: {num_train: 512, num_val: 128, features: 8, classes: 4, noise: 1.0}
models:
  teacher: {arch: ${name}_mlp, options: {hidden: 64, depth: 2}}
  student: {arch: ${name}_mlp, options: {hidden: 8, depth: 1}}
stages:
  - name: teacher
    model: teacher
    role: teacher
    losses: [{name: ce}]
    optimizer: {name: adamw, lr: 0.01}
    steps: 60
    batch_size: 32
  - name: student
    model: student
    role: student
    teachers: [teacher]
    losses:
      - {name: ce, weight: 0.5}
      - {name: kd, loss: kl_t, weight: 0.5, options: {temperature: 4.0}}
    optimizer: {name: adamw, lr: 0.01}
    steps: 60
    batch_size: 32
  - name: baseline_student
    model: student
    role: baseline
    baseline_for: student
    losses: [{name: ce}]
    optimizer: {name: adamw, lr: 0.01}
    steps: 60
    batch_size: 32
deploy_model: student
export: {target: onnx}
"""

TASK_TEST = '''\
"""Conformance tests for the ${name} task, and one short run through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from kdtool.testing import check_plugin, check_task

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "${name}.yaml"


def test_plugin_is_installed_and_registers_the_task() -> None:
    report = check_plugin("${plugin}")
    assert any("${name}" in line for line in report.passed)


def test_task_passes_the_conformance_kit() -> None:
    check_task("${name}", RECIPE)


def test_distill_runs_through_the_cli(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "kdtool", "distill", str(RECIPE), "--max-steps", "3", "--no-progress",
         "--no-report", "--set", f"runs_dir={tmp_path}", "--set", "device=cpu"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "latest" / "summary.json").read_text())
    assert summary["task"] == "${name}"
    assert "accuracy" in summary["models"]["student"]["metrics"]
'''

# --------------------------------------------------------------------------- exporter

EXPORTER_MODULE = '''\
"""kdtool plugin ${plugin}: the ``${name}`` exporter and its ``${name}-cpu`` target profile.

The shape of an exporter that starts from ONNX: it asks the framework for the ONNX artifact
(``ctx.require_artifact``: the export is recorded in the manifest, never hidden), packs the
graphs and the deploy metadata into one zip file, verifies the bundle against PyTorch with
ONNX Runtime at every test shape, and loads it back as a runner (what ``kdtool eval``,
``bench`` and ``predict`` use). Replace the packing with your format's converter.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from pydantic import Field

from kdtool import ExportSpec, hookimpl
from kdtool.errors import ExportError
from kdtool.export.exporter import (
    Artifact,
    ArtifactRunner,
    Capabilities,
    ExportContext,
    Exporter,
    ExporterOptions,
)
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "${api}"

BUNDLE = "model.zip"


class ${cls}Options(ExporterOptions):
    """``--opt key=value`` options (unknown keys are errors; every option has a default)."""

    compression: int = Field(default=6, ge=0, le=9, description="zlib level of the bundle")


def _session(bundle: zipfile.ZipFile, graph: str) -> ort.InferenceSession:
    return ort.InferenceSession(bundle.read(f"{graph}.onnx"), providers=["CPUExecutionProvider"])


def _runner(session: ort.InferenceSession) -> Callable[..., tuple[torch.Tensor, ...]]:
    names = [i.name for i in session.get_inputs()]

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feeds = {n: np.ascontiguousarray(x.detach().cpu().numpy()) for n, x in zip(names, inputs, strict=True)}
        return tuple(torch.from_numpy(np.asarray(o)) for o in session.run(None, feeds))

    return run


class ${cls}Exporter(Exporter):
    capabilities = Capabilities(
        name="${name}",
        suffix=".zip",
        precisions=("fp32",),
        options_model=${cls}Options,
        default_profile="${name}-cpu",
        description="ONNX graphs and deploy metadata in one zip bundle (template exporter)",
        requires=(("onnxruntime", "pip install onnxruntime"),),
    )

    def export(self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: ExportContext) -> Artifact:
        assert isinstance(options, ${cls}Options)
        onnx_artifact = ctx.require_artifact("onnx", {})
        path = out_dir / BUNDLE
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=options.compression) as zf:
            for file in onnx_artifact.files():
                zf.write(file, arcname=str(Path(file).relative_to(onnx_artifact.directory)))
            zf.writestr("metadata.json", json.dumps(spec.metadata.to_dict()))
        shutil.rmtree(onnx_artifact.directory)  # the bundle replaces the intermediate ONNX files
        return Artifact(out_dir, {g.name: path for g in spec.graphs}, details={"members": len(spec.graphs) + 1})

    def load(self, directory: Path, manifest: dict[str, Any], *, device: str = "cpu") -> ArtifactRunner:
        path = Path(directory) / BUNDLE
        if not path.exists():
            raise ExportError(f"{directory} has no {BUNDLE}")
        with zipfile.ZipFile(path) as bundle:
            graphs = {name: _runner(_session(bundle, name)) for name in manifest["graphs"]}
        return ArtifactRunner(
            graphs,
            kind="${name}",
            input_names={n: [i["name"] for i in g["inputs"]] for n, g in manifest["graphs"].items()},
            metadata=manifest.get("metadata", {}),
        )

    def versions(self) -> dict[str, str]:
        return {**super().versions(), "onnxruntime": ort.__version__}


PROFILE = TargetProfile(
    name="${name}-cpu",
    exporter="${name}",
    description="CPU through ONNX Runtime, FP32, as one zip bundle (template profile)",
    precision="fp32",
)


@hookimpl
def register_exporters(register: Register) -> None:
    register("${name}", ${cls}Exporter, description=${cls}Exporter.capabilities.description)


@hookimpl
def register_targets(register: Register) -> None:
    register(PROFILE.name, PROFILE, description=PROFILE.description)

'''

EXPORTER_TEST = '''\
"""Conformance tests for the ${name} exporter and its target profile."""

from __future__ import annotations

from kdtool.testing import check_exporter, check_plugin, check_target
from ${module} import ${cls}Exporter


def test_plugin_is_installed_and_registers_the_exporter() -> None:
    report = check_plugin("${plugin}")
    assert any("${name}" in line for line in report.passed)


def test_exporter_passes_the_conformance_kit() -> None:
    # Exports a reference model, verifies it, then exports the kit's tiny reference run through the
    # real export driver and loads the artifact back (about half a minute on a laptop).
    check_exporter(${cls}Exporter)


def test_target_profile_is_valid() -> None:
    check_target("${name}-cpu")
'''

# --------------------------------------------------------------------------- target

TARGET_MODULE = '''\
"""kdtool plugin ${plugin}: the ``${name}`` target profile.

A target profile is an installed exporter plus tuned defaults for one kind of hardware:
``kdtool export --target ${name}``. Edit the options (see ``kdtool targets`` and the
exporter's options) and ``machine`` (what hardware the artifact is tuned for: ``cpu_arch``,
``cuda``, ``compute_capability``, ``os``).
"""

from __future__ import annotations

from kdtool import hookimpl
from kdtool.export.targets import TargetProfile
from kdtool.hookspecs import Register

KDTOOL_PLUGIN_API = "${api}"

PROFILE = TargetProfile(
    name="${name}",
    exporter="onnx",
    description="x86-64 CPU, FP32, basic ONNX Runtime graph optimisations, one thread (template profile)",
    precision="fp32",
    options={"graph_optimization": "basic", "threads": 1},
    machine={"cpu_arch": "x86_64"},
)


@hookimpl
def register_targets(register: Register) -> None:
    register(PROFILE.name, PROFILE, description=PROFILE.description)
'''

TARGET_TEST = '''\
"""Conformance tests for the ${name} target profile."""

from __future__ import annotations

from kdtool.testing import check_plugin, check_target
from ${module} import PROFILE


def test_plugin_is_installed_and_registers_the_profile() -> None:
    report = check_plugin("${plugin}")
    assert any("${name}" in line for line in report.passed)


def test_profile_passes_the_conformance_kit() -> None:
    check_target(PROFILE)
    check_target("${name}")
'''

MODULES = {"loss": LOSS_MODULE, "task": TASK_MODULE, "exporter": EXPORTER_MODULE, "target": TARGET_MODULE}
TESTS = {"loss": LOSS_TEST, "task": TASK_TEST, "exporter": EXPORTER_TEST, "target": TARGET_TEST}
