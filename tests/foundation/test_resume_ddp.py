"""Kill-and-resume (SIGKILL mid-stage) and 2-process DDP with gloo, through the real CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from kdtool.engine.rundir import newest_run
from tests.helpers import run_cli, tiny_recipe, write_recipe


def _weights(run_dir: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "models" / f"{name}.safetensors"))


def test_killed_run_resumes_bit_identical(tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "runs")
    # augmentation (seeded per sample), dropout and batch norm all draw on saved state
    recipe["data"] = {"source": "digits", "image_size": 16, "augment": True}
    recipe["models"]["teacher"] = {"arch": "cls_cnn", "options": {"base": 16, "dropout": 0.2}}
    recipe["stages"][0]["steps"] = 300
    recipe["checkpoint"] = {"every_steps": 10, "keep_last": 2}
    path = write_recipe(tmp_path / "r.yaml", recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(
        [sys.executable, "-m", "kdtool", "distill", str(path), "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    killed_at = None
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        started = newest_run(tmp_path / "runs" / "tiny")  # latest names only finished runs
        pointer = started / "checkpoints" / "teacher" / "latest.json" if started else None
        if pointer is not None and pointer.exists():
            try:
                step = json.loads(pointer.read_text())["step"]
            except (json.JSONDecodeError, KeyError):
                step = 0
            if step >= 110:
                proc.send_signal(signal.SIGKILL)
                killed_at = step
                break
        time.sleep(0.01)
    proc.wait()
    assert killed_at is not None, "the run finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "runs" / "tiny" / "latest").exists()
    killed_run = newest_run(tmp_path / "runs" / "tiny")
    assert killed_run is not None
    assert not (killed_run / "models" / "teacher.safetensors").exists()

    resumed = run_cli(["distill", str(path), "--resume", "--no-progress"], env_extra={"OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoints/teacher/step-" in resumed.stdout

    clean = run_cli(["distill", str(path), "--no-progress"], env_extra={"OMP_NUM_THREADS": "1"})
    assert clean.returncode == 0, clean.stderr
    clean_run = (tmp_path / "runs" / "tiny" / "latest").resolve()
    assert clean_run != killed_run
    for stage in ("teacher", "student", "baseline_student"):
        a, b = _weights(killed_run, stage), _weights(clean_run, stage)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"stage {stage} differs after resume"
    # the metrics log holds each training record once
    records = [json.loads(x) for x in (killed_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["stage"] == "teacher" and r["split"] == "train"]
    assert steps == sorted(set(steps))


def test_resume_refuses_a_different_recipe_without_stage_hashes(tmp_path: Path) -> None:
    """A run from a kdtool that did not record per-stage hashes cannot be matched stage by stage."""
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    first = run_cli(["distill", str(path), "--no-progress", "--max-steps", "2"])
    assert first.returncode == 0, first.stderr
    state_path = tmp_path / "runs" / "tiny" / "latest" / "state.json"
    state = json.loads(state_path.read_text())
    del state["stage_hashes"]
    state_path.write_text(json.dumps(state))
    again = run_cli(["distill", str(path), "--resume", "--set", "seed=5"])
    assert again.returncode == 6
    assert "different recipe" in again.stderr


def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    """DDP on 2 CPU processes, global batch 32 (16 each), equals one process with batch 32."""
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe(tmp_path / "runs"))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ddp = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "kdtool",
            "distill",
            str(path),
            "--only",
            "teacher",
            "--no-progress",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    ddp_run = (tmp_path / "runs" / "tiny" / "latest").resolve()
    summary = json.loads((ddp_run / "summary.json").read_text())
    assert summary["world_size"] == 2
    single = run_cli(
        ["distill", str(path), "--only", "teacher", "--no-progress"], env_extra={"OMP_NUM_THREADS": "1"}
    )
    assert single.returncode == 0, single.stderr
    single_run = (tmp_path / "runs" / "tiny" / "latest").resolve()
    a, b = _weights(ddp_run, "teacher"), _weights(single_run, "teacher")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=2e-5), k
    # and DDP really trained (weights moved from init)
    assert summary["models"]["teacher"]["metrics"]["accuracy"] > 0.5
