"""End to end: a tiny supernet run, named subnets in summary.json, 3-graph ONNX export of a
subnet, greedy decoding over the ONNX graphs equal to PyTorch, ``kdtool predict`` on a WAV,
``kdtool subnets`` with a budget. Marked slow (about a minute on 2 cores)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import soundfile as sf
import yaml

from kdtool import runtime
from kdtool.engine.trainer import DistillOptions, Engine
from kdtool.export.driver import ExportRequest, export_model
from kdtool.recipe import load_recipe
from kdtool.run import Run
from kdtool.task import Predictor

pytestmark = pytest.mark.slow

ARCH = {
    "head_dim": 8,
    "max_heads": 2,
    "max_layers": 2,
    "max_ffn": 16,
    "state_size": 4,
    "front_channels": 16,
    "joiner_dim": 16,
    "predictor_dim": 16,
    "layer_choices": [1, 2],
    "head_choices": [1, 2],
    "ffn_choices": [8, 16],
}


def tiny_asr_recipe(runs: Path, cache: Path, **data: Any) -> dict[str, Any]:
    stage = {
        "optimizer": {"name": "scaled_adam", "lr": 0.03},
        "schedule": {"name": "eden", "warmup_steps": 2, "options": {"lr_batches": 10, "lr_epochs": 1}},
        "steps": 3,
        "batch_size": 4,
    }
    return {
        "name": "tiny_asr",
        "task": {"name": "asr_supernet", "options": {"eval_batch_size": 8}},
        "device": "cpu",
        "runs_dir": str(runs),
        "data": {"source": "espeak", "num_train": 16, "num_val": 6, "max_duration": 5.0, **data},
        "models": {
            "supernet": {"arch": "asr_supernet_rnnt", "options": ARCH},
            "large": {
                "arch": "asr_supernet_rnnt",
                "options": {**ARCH, "layer_choices": [2], "head_choices": [2], "ffn_choices": [16]},
            },
            "small": {
                "arch": "asr_supernet_rnnt",
                "options": {
                    **ARCH,
                    "max_layers": 1,
                    "max_heads": 1,
                    "max_ffn": 8,
                    "layer_choices": [1],
                    "head_choices": [1],
                    "ffn_choices": [8],
                },
            },
        },
        "stages": [
            {
                "name": "supernet",
                "model": "supernet",
                "role": "supernet",
                "keep": "last",
                "losses": [{"name": "rnnt"}, {"name": "kd", "loss": "alpha_div"}],
                "options": {
                    "num_random": 1,
                    "largest_only_steps": 1,
                    "kd_weight": {"start": 0.5, "end": 1.0, "to_step": 3},
                    "subnet_rnnt_weight": {"start": 1.0, "end": 0.5, "to_step": 3},
                },
                **stage,
            },
            {
                "name": "baseline",
                "model": "small",
                "role": "baseline",
                "baseline_for": "supernet",
                "keep": "last",
                "options": {"twin": {"stage": "supernet", "subnet": "smallest"}},
                **stage,
            },
            {
                "name": "twin_largest",
                "model": "large",
                "role": "baseline",
                "baseline_for": "supernet",
                "keep": "last",
                "options": {"twin": {"stage": "supernet", "subnet": "largest"}},
                **stage,
            },
        ],
        "deploy_model": "supernet",
        "logging": {"every_steps": 1, "progress": False},
    }


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("espeakng_loader", reason="the embedded data needs the 'speech' extra")
    tmp = tmp_path_factory.mktemp("asr")
    path = tmp / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_asr_recipe(tmp / "runs", tmp / "cache")))
    result = Engine(load_recipe(path), DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    return result


def test_summary_lists_named_subnets(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    models = summary["models"]
    for label in ("largest", "middle", "smallest"):
        entry = models[f"supernet-{label}"]
        assert entry["role"] == "subnet" and "wer" in entry["metrics"]
        assert (run_dir / entry["weights"]).exists()
    assert models["supernet-smallest"]["params"] == models["baseline"]["params"]
    assert models["supernet-largest"]["params"] == models["supernet"]["params"]
    assert summary["deploy_model"] == "supernet"
    # each named subnet with a twin is compared with it (like with like), the supernet with the largest's
    assert models["supernet-smallest"]["twin"] == "baseline" == models["supernet-smallest"]["compare_with"]
    assert models["supernet-largest"]["twin"] == "twin_largest" == models["supernet"]["compare_with"]
    assert models["baseline"]["twin_of"] == "supernet-smallest"
    # in this tiny search space the middle subnet is the largest one, so it shares its twin
    assert models["supernet-middle"]["subnet"]["layers"] == 2
    assert models["supernet-middle"]["twin"] == "twin_largest"
    from kdtool.report.collect import model_rows

    rows = {r.name: r for r in model_rows(summary, run_dir)}
    assert rows["supernet-smallest"].gain_baseline == "baseline"
    assert rows["supernet"].gain_baseline == "twin_largest"
    assert rows["supernet-largest"].gain == pytest.approx(
        models["twin_largest"]["metrics"]["wer"] - models["supernet-largest"]["metrics"]["wer"]
    )
    # the supernet's evaluations score every named subnet (learning curves), figures for the report
    val = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in val if r.get("stage") == "supernet" and r.get("split") == "val"][-1]
    assert {"wer_largest", "wer_middle", "wer_smallest"} <= set(last)
    assert last["wer_largest"] == last["wer"]
    assert (run_dir / "figures" / "todm_supernet_pareto.png").exists()
    assert (run_dir / "figures" / "todm_supernet_learning_curves.png").exists()


def test_three_graph_onnx_export_and_ort_greedy_decoding(run_dir: Path) -> None:
    out = export_model(
        ExportRequest(run=run_dir, target="onnx", model="supernet-middle"), echo=lambda _m: None
    )
    manifest = out.manifest
    assert set(manifest["graphs"]) == {"encoder", "decoder", "joiner"}
    assert manifest["verification"]["passed"] is True
    meta = manifest["metadata"]
    assert meta["vocabulary"][0] == "<blank>" and meta["postprocessing"]["blank"] == 0
    assert meta["preprocessing"]["features"]["num_mel_bins"] == 80
    enc = onnx.load(str(out.directory / manifest["graphs"]["encoder"]["file"]))
    props = {p.key: p.value for p in enc.metadata_props}
    assert json.loads(props["vocabulary"]) == meta["vocabulary"]
    # greedy decoding over the three ONNX graphs reproduces the PyTorch transcripts
    ctx = Run.open(run_dir)
    task = ctx.task
    dataset = task.build_dataset("val")
    torch_pred = Predictor.from_spec(ctx.export_spec("supernet-middle"))
    ort_pred = runtime.load(out.directory)
    refs, hyps_torch = task.transcribe(torch_pred, dataset, range(len(dataset)))  # type: ignore[arg-type]
    _, hyps_ort = task.transcribe(ort_pred, dataset, range(len(dataset)))  # type: ignore[arg-type]
    assert hyps_ort == hyps_torch
    # kdtool predict on WAV files: the same samples give the same transcript as evaluation
    from kdtool_asr.audio import resample

    audio = dataset.items[0].audio  # type: ignore[attr-defined]
    wav = run_dir / "u.wav"
    sf.write(wav, audio, 16000, subtype="FLOAT")
    stereo = run_dir / "u44.wav"  # 44.1 kHz stereo: resampled and mixed down
    sf.write(stereo, np.stack([resample(audio, 16000, 44100)] * 2, 1), 44100)
    results = runtime.predict_files(out.directory, [wav, stereo])
    assert results[0]["text"] == hyps_ort[_position(dataset, 0)]
    assert isinstance(results[1]["text"], str) and results[1]["duration_s"] == pytest.approx(
        results[0]["duration_s"], abs=0.01
    )


def _position(dataset: Any, index: int) -> int:
    """Where utterance ``index`` lands in transcribe()'s output (sorted by length, stable)."""
    lengths = [dataset.features(i).shape[0] for i in range(len(dataset))]
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return order.index(index)


def test_subnets_command_with_budget(run_dir: Path) -> None:
    from typer.testing import CliRunner

    from kdtool.cli import app

    result = CliRunner().invoke(
        app, ["subnets", str(run_dir), "--max-params", "10000000", "--repeats", "1", "--name", "picked"]
    )
    assert result.exit_code == 0, result.output
    assert (run_dir / "subnets" / "pareto.png").exists()
    table = json.loads((run_dir / "subnets" / "table.json").read_text())
    assert len(table["rows"]) == 8 and all(r["latency_ms"] > 0 for r in table["rows"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["models"]["picked"]["role"] == "subnet"
    assert summary["models"]["picked"]["picked_by"]["stable"] in (True, False)
    assert (run_dir / "figures" / "subnets_pareto.png").exists()  # shown by kdtool report
    assert all(len(r["latency_quartiles_ms"]) == 3 for r in table["rows"])
    out = export_model(ExportRequest(run=run_dir, target="onnx", model="picked"), echo=lambda _m: None)
    assert out.manifest["status"] == "ok"


def test_librispeech_recipe_validates_and_runs_two_steps_on_the_fixture(tmp_path: Path) -> None:
    from tests.asr.test_data_decoding import write_librispeech

    root = write_librispeech(tmp_path / "ls")
    for i in range(3):  # a few more utterances: 2 for training batches, 1+ for validation
        folder = root / "26" / "495"
        sf.write(folder / f"26-495-{i + 1:04d}.flac", np.zeros(8000, np.float32) + 0.01 * i, 16000)
    (root / "26" / "495" / "26-495.trans.txt").write_text(
        "26-495-0000 ONE TWO\n26-495-0001 THREE\n26-495-0002 FOUR\n26-495-0003 FIVE SIX\n"
    )
    overrides = [
        f"data.root={root}",
        "data.val_root=null",
        "data.val_fraction=0.3",
        "precision=fp32",
        "device=cpu",
        "num_workers=0",
        f"runs_dir={tmp_path / 'runs'}",
        "stages.supernet.steps=2",
        "stages.supernet.epochs=null",
        "stages.supernet.batch_size=2",
        "logging.progress=false",
        "task.options.beam=2",
    ]
    overrides += [f"models.supernet.options.{k}={json.dumps(v)}" for k, v in ARCH.items()]
    loaded = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "asr_supernet_librispeech.yaml", overrides
    )
    result = Engine(loaded, DistillOptions(progress=False, echo=lambda _m: None)).run()
    assert isinstance(result, Path)
    summary = json.loads((result / "summary.json").read_text())
    assert summary["models"]["supernet"]["steps"] == 2 and "supernet-smallest" in summary["models"]
