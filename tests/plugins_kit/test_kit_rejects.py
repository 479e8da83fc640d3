"""The conformance kit fails plugins that break a contract, with a message naming the rule.

Each broken plugin here is a small variant of a working one, so the test would pass (and the
kit would be useless) if the check it targets went missing.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kdtool_classification.task import ClassificationTask
from torch import nn

from kdtool import TensorSpec
from kdtool.errors import ExportError
from kdtool.export.exporter import Artifact, ArtifactRunner, Capabilities, Exporter, ExporterOptions
from kdtool.export.spec import ExportSpec
from kdtool.export.targets import TargetProfile
from kdtool.testing import (
    ConformanceError,
    ConformanceSkip,
    check_exporter,
    check_loss,
    check_plugin,
    check_target,
    check_task,
    reference_spec,
)
from tests.helpers import tiny_recipe, write_recipe

LOGITS = (
    TensorSpec("student_logits", ("batch", "classes")),
    TensorSpec("teacher_logits", ("batch", "classes")),
)

# ============================================================================ losses


class GoodKL(nn.Module):
    input_specs = LOGITS

    def __init__(self, temperature: float = 2.0) -> None:
        super().__init__()
        self.t = temperature

    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        log_q = F.log_softmax(student_logits / self.t, -1)
        p = F.softmax(teacher_logits.detach() / self.t, -1)
        return F.kl_div(log_q, p, reduction="batchmean") * self.t**2


class ReturnsFloat(GoodKL):
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Any:
        return float(super().forward(student_logits, teacher_logits))


class NoGradient(GoodKL):
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return torch.tensor(super().forward(student_logits, teacher_logits).item())


class NotScalar(GoodKL):
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return (student_logits - teacher_logits.detach()).pow(2).mean(-1)


class GradIntoTeacher(GoodKL):
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return (student_logits - teacher_logits).pow(2).mean()


class NotFinite(GoodKL):
    def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        return (student_logits.softmax(-1) - 0.5).log().sum()  # log of negatives


class RequiredOption(GoodKL):
    def __init__(self, temperature: float) -> None:
        super().__init__(temperature)


class Undeclared(nn.Module):
    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(prediction, target)


def test_a_good_loss_passes_with_a_report() -> None:
    report = check_loss(GoodKL)
    text = str(report)
    assert "finite scalar" in text and "student_logits" in text and "teacher" in text
    check_loss("kl_t")  # a built-in, found by name


@pytest.mark.parametrize(
    ("loss", "step", "words"),
    [
        (ReturnsFloat, "return type", "returned float, not a torch.Tensor"),
        (NoGradient, "gradient", "has no gradient"),
        (NotScalar, "scalar", "not a scalar"),
        (GradIntoTeacher, "frozen teacher", "back-propagates into the teacher's input 'teacher_logits'"),
        (NotFinite, "finite", "on random inputs"),
        (RequiredOption, "defaults", "give every constructor argument a default"),
        (Undeclared, "input_specs", "does not declare the shapes of its inputs (prediction, target)"),
    ],
)
def test_a_broken_loss_fails_with_a_readable_message(loss: type[nn.Module], step: str, words: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_loss(loss)
    assert info.value.step == step
    assert str(info.value).startswith(f"loss {loss.__name__!r} fails the kdtool conformance check [{step}]")
    assert words in str(info.value)
    assert "Traceback" not in str(info.value)


def test_loss_inputs_and_options_can_be_given() -> None:
    check_loss(Undeclared, inputs=lambda g: (torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g)))
    check_loss(RequiredOption, options={"temperature": 3.0})


def test_a_multi_term_loss_is_checked_per_term() -> None:
    class TwoTerms(GoodKL):
        def forward(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> Any:
            return {"kl": super().forward(student_logits, teacher_logits), "bad": torch.tensor(1.0)}

    with pytest.raises(ConformanceError, match="term 'bad': the returned loss has no gradient"):
        check_loss(TwoTerms)


# ============================================================================ tasks


def _recipe(tmp_path: Path, task_name: str, *, student: bool = False) -> Path:
    recipe = tiny_recipe(tmp_path / "runs", task={"name": task_name})
    recipe["stages"] = recipe["stages"][:2] if student else recipe["stages"][:1]
    return write_recipe(tmp_path / f"{task_name}.yaml", recipe)


class ListLosses(ClassificationTask):
    name = "broken_list_losses"

    def training_step(self, stage: Any, models: Any, batch: Any, ctx: Any) -> Any:
        return list(super().training_step(stage, models, batch, ctx).values())


class FloatLoss(ClassificationTask):
    name = "broken_float_loss"

    def training_step(self, stage: Any, models: Any, batch: Any, ctx: Any) -> Any:
        return {k: float(v) for k, v in super().training_step(stage, models, batch, ctx).items()}


class DetachedLoss(ClassificationTask):
    name = "broken_detached_loss"

    def training_step(self, stage: Any, models: Any, batch: Any, ctx: Any) -> Any:
        return {k: v.detach() for k, v in super().training_step(stage, models, batch, ctx).items()}


class NoPrimaryMetric(ClassificationTask):
    name = "broken_metric"

    def evaluate(self, predictor: Any, split: Any = "val", *, limit: int | None = None) -> dict[str, float]:
        return {"nll": super().evaluate(predictor, split, limit=limit)["nll"]}


class WrongExportInputs(ClassificationTask):
    """Declares a 3-channel input while the model takes 1 channel: the inputs do not run."""

    name = "broken_export_inputs"

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        spec = super().export_spec(model, model_name)
        g = spec.graphs[0]
        g.inputs = [TensorSpec("image", ("batch", 3, 7, 7))]
        return spec


class WrongExportOutputs(ClassificationTask):
    """The graph returns probabilities flattened with a wrong class count."""

    name = "broken_export_outputs"

    def export_spec(self, model: nn.Module, model_name: str) -> ExportSpec:
        spec = super().export_spec(model, model_name)
        spec.graphs[0].outputs = [TensorSpec("logits", ("batch", 5), role="output")]
        return spec


class NoIndex(ClassificationTask):
    name = "broken_index"

    def build_dataset(self, split: Any) -> Any:
        base = super().build_dataset(split)

        class Wrapped(torch.utils.data.Dataset):  # type: ignore[type-arg]
            def __len__(self) -> int:
                return len(base)  # type: ignore[arg-type]

            def __getitem__(self, i: int) -> dict[str, Any]:
                return {k: v for k, v in base[i].items() if k != "index"}

        return Wrapped()


def test_a_good_task_passes(tmp_path: Path) -> None:
    report = check_task(ClassificationTask, _recipe(tmp_path, "image_classification", student=True))
    text = str(report)
    assert "training_step gives finite losses ['ce', 'kd']" in text
    assert "evaluate returns accuracy" in text and "export spec graphs ['model']" in text


@pytest.mark.parametrize(
    ("task", "step", "words"),
    [
        (ListLosses, "training_step", "returned list, not a non-empty dict of named losses"),
        (FloatLoss, "training_step", "loss 'ce' is float, not a torch.Tensor"),
        (DetachedLoss, "gradient", "loss 'ce' has no gradient"),
        (NoPrimaryMetric, "evaluate", "without the primary metric 'accuracy'"),
        (WrongExportInputs, "export inputs", "graph 'model' on its example inputs image (1, 3, 7, 7) raised"),
        (WrongExportOutputs, "export outputs", "output 'logits' axis 1 is 10"),
        (NoIndex, "dataset", 'items need "index"'),
    ],
)
def test_a_broken_task_fails_with_a_readable_message(
    task: type, step: str, words: str, tmp_path: Path
) -> None:
    with pytest.raises(ConformanceError) as info:
        check_task(task, _recipe(tmp_path, task.name))
    assert info.value.step == step, str(info.value)
    assert f"task {task.name!r} fails the kdtool conformance check [{step}]" in str(info.value)
    assert words in str(info.value)


def test_a_recipe_for_another_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ConformanceError, match="the recipe names task 'image_classification', not 'broken_metric'"
    ):
        check_task(NoPrimaryMetric, _recipe(tmp_path, "image_classification"))


# ============================================================================ exporters


class _Opts(ExporterOptions):
    pass


def _exporter(name: str, export: Any, load: Any = None) -> type[Exporter]:
    class Broken(Exporter):
        capabilities = Capabilities(
            name=name, suffix=".bin", precisions=("fp32",), options_model=_Opts, default_profile=name
        )

        def export(self, spec: ExportSpec, options: ExporterOptions, out_dir: Path, ctx: Any) -> Any:
            return export(spec, out_dir)

        def load(self, directory: Path, manifest: Mapping[str, Any], *, device: str = "cpu") -> Any:
            if load is None:
                raise ExportError("nothing runs this format here")
            return load()

    return Broken


def _wrong_outputs() -> ArtifactRunner:
    """A runner whose outputs are PyTorch's plus 1: the driver's parity must catch it."""
    spec = reference_spec()
    module = spec.graphs[0].module.eval()

    def run(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return (module(*inputs) + 1.0,)

    return ArtifactRunner({spec.graphs[0].name: run}, kind="broken")


def _raises_type_error() -> Any:
    raise TypeError("load() got an unexpected keyword argument")


def _write(spec: ExportSpec, out_dir: Path) -> Artifact:
    path = out_dir / "model.bin"
    path.write_bytes(b"weights")
    return Artifact(out_dir, {g.name: path for g in spec.graphs})


@pytest.mark.parametrize(
    ("exporter", "step", "words"),
    [
        (
            _exporter("dict_exporter", lambda spec, out: {"model": out / "m"}),
            "export",
            "returned dict, not a kdtool.export.exporter.Artifact",
        ),
        (
            _exporter("missing_file", lambda spec, out: Artifact(out, {"model": out / "nothing.bin"})),
            "artifact",
            "does not exist",
        ),
        (
            _exporter(
                "wrong_graph",
                lambda spec, out: Artifact(out, {"other": _write(spec, out).graph_files["model"]}),
            ),
            "artifact",
            "graph_files has keys ['other']",
        ),
        (
            _exporter("wrong_numbers", _write, load=_wrong_outputs),
            "verify",
            "parity failed on the reference model: graph 'model' output",
        ),
        (_exporter("load_crashes", _write, load=_raises_type_error), "verify", "raised TypeError"),
    ],
)
def test_a_broken_exporter_fails_with_a_readable_message(exporter: type, step: str, words: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_exporter(exporter, through_driver=False)
    assert info.value.step == step, str(info.value)
    assert words in str(info.value)


def test_an_exporter_that_cannot_build_here_is_skipped() -> None:
    class NeedsGpu(_exporter("gpu_only", _write)):  # type: ignore[misc]
        capabilities = Capabilities(
            name="gpu_only", suffix=".bin", precisions=("fp32",), options_model=_Opts, default_profile="gpu_only",
            requires=(("a_package_that_is_not_installed", "pip install a-package"),),
        )  # fmt: skip

    with pytest.raises(ConformanceSkip, match="pip install a-package"):
        check_exporter(NeedsGpu)


def test_an_exporter_without_parity_that_says_why_passes_the_direct_checks() -> None:
    report = check_exporter(_exporter("says_why", _write), through_driver=False)
    assert any("0 parity checks passed, 2 not verified" in line for line in report.passed)


# ============================================================================ targets and plugins


@pytest.mark.parametrize(
    ("profile", "words"),
    [
        (
            TargetProfile("x-cpu", exporter="nope", description="d"),
            "names exporter 'nope', which is not installed",
        ),
        (TargetProfile("x-cpu", exporter="onnx", description="d", options={"opset_typo": 17}), "opset_typo"),
        (TargetProfile("x-cpu", exporter="onnx", description="d", precision="fp8"), "precision 'fp8'"),
        (TargetProfile("onnx", exporter="onnx", description="d"), "is an exporter's name"),
        (TargetProfile("x-cpu", exporter="onnx", description="d", machine={"cuda": "yes"}), "cuda='yes'"),
        (TargetProfile("x-cpu", exporter="onnx", description=""), "description is empty"),
    ],
)
def test_a_broken_target_fails(profile: TargetProfile, words: str) -> None:
    with pytest.raises(ConformanceError) as info:
        check_target(profile)
    assert words in str(info.value)


def test_check_plugin_names_what_is_missing() -> None:
    with pytest.raises(ConformanceError, match="no plugin of that name is installed"):
        check_plugin("not-a-plugin")
    report = check_plugin("onnx")
    assert any("exporter: onnx" in line for line in report.passed)
