"""Each shipped recipe's deploy model converts with each Core ML profile (slow).

The model is freshly built from the recipe (conversion does not depend on training);
the exporter's own verification re-reads every package and checks it against the spec.
Recipes whose data is not on this machine (paper-scale datasets) are skipped with the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kdtool.engine.trainer import build_model, build_task
from kdtool.errors import DataError, KdtoolError
from kdtool.export.exporter import ExportContext
from kdtool.export.spec import ExportSpec
from kdtool.export.verify import draft_manifest, verify_artifact
from kdtool.plugins import get_registries
from kdtool.recipe import load_recipe
from tests.helpers import REPO

pytest.importorskip("coremltools")

from kdtool_coreml.exporter import CoreMLExporter  # noqa: E402
from kdtool_coreml.inspect import read_package  # noqa: E402

PROFILES = ["coreml-iphone", "coreml-iphone-small", "coreml-mac", "coreml-cpu"]
# Smaller synthetic data where a recipe generates it (the model is what matters here).
FAST = {
    "facial_landmarks": [
        "data.synthetic.train_size=16",
        "data.synthetic.val_size=8",
        "data.synthetic.supersample=2",
    ],
}
RECIPES = sorted(p.stem for p in (REPO / "recipes").glob("*.yaml"))
_SPECS: dict[str, ExportSpec | str] = {}


def deploy_spec(recipe: str, tmp: Path) -> ExportSpec:
    """The recipe's deploy model (fresh weights) as an export spec; skip if it cannot be built here."""
    if recipe not in _SPECS:
        try:
            loaded = load_recipe(
                REPO / "recipes" / f"{recipe}.yaml", [f"runs_dir={tmp}", *FAST.get(recipe, [])]
            )
            regs = get_registries()
            if loaded.recipe.task.name not in regs.tasks:
                raise DataError(f"task {loaded.recipe.task.name!r} is not installed")
            task = build_task(loaded, regs, tmp / "cache")
            task.prepare(tmp / "run")
            # the deploy stage (e.g. a QAD stage) names the model it trains
            name = loaded.recipe.stage(loaded.recipe.default_deploy_model(task.roles)).model
            model = build_model(task, regs, name, loaded.recipe.models[name]).module.eval()
            _SPECS[recipe] = task.export_spec(model, name)
        except (DataError, FileNotFoundError) as exc:
            _SPECS[recipe] = f"{recipe}: cannot build its data here: {str(exc).splitlines()[0]}"
        except KdtoolError as exc:
            _SPECS[recipe] = f"{recipe}: {str(exc).splitlines()[0]}"
    spec = _SPECS[recipe]
    if isinstance(spec, str):
        pytest.skip(spec)
    return spec


@pytest.mark.slow
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("recipe", RECIPES)
def test_shipped_recipe_converts_with_profile(
    recipe: str, profile: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    spec = deploy_spec(recipe, tmp_path_factory.mktemp("spec"))
    regs = get_registries()
    target = regs.targets.get(profile)
    exporter = CoreMLExporter()
    options: Any = exporter.capabilities.options_model.model_validate(
        {**target.options, "precision": target.precision}
    )
    out = tmp_path_factory.mktemp(f"{recipe}-{profile}")
    ctx = ExportContext(
        target=profile, precision=target.precision, require_artifact=lambda *_: None, log=lambda _m: None
    )  # type: ignore[arg-type,return-value]
    artifact = exporter.export(spec, options, out, ctx)
    # one package per graph (the ASR transducer has several)
    assert set(artifact.graph_files) == set(spec.graph_names)
    if len(spec.graphs) > 1:
        assert {p.name for p in artifact.graph_files.values()} == {f"{g}.mlpackage" for g in spec.graph_names}
    result = verify_artifact(exporter, spec, artifact, options, draft_manifest(spec, artifact, options))
    assert set(result.checks["package_structure"]) == set(spec.graph_names)
    assert any("not checked on this platform" in n for n in result.not_verified)
    for graph in spec.graphs:
        info = read_package(artifact.graph_files[graph.name])
        assert [i["name"] for i in info.inputs] == [t.name for t in graph.inputs]
        assert [o["name"] for o in info.outputs] == [t.name for t in graph.outputs]
        details = artifact.details["graphs"][graph.name]
        if options.effective_quantize.startswith("palettize"):
            assert details["compressed_weights"], "palettized profile left every weight in float"
        expected_float = "FLOAT32" if target.precision == "fp32" else "FLOAT16"
        assert set(info.float_weights) <= {expected_float}
