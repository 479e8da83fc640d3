"""Checkpoints: weights as safetensors plus optimizer/scheduler/RNG/data-position state.

Layout: ``checkpoints/<stage>/step-000120/{model.safetensors, losses.safetensors, trainer.pt}``
and ``checkpoints/<stage>/latest.json``. A checkpoint directory is written under a temporary
name and renamed, and ``latest.json`` is replaced atomically after that, so a run killed at
any moment resumes from the last complete checkpoint. ``trainer.pt`` holds only tensors and
plain Python values and is read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdtool.errors import RunError
from kdtool.io import load_weights, read_json, save_weights, write_json


def capture_rng() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    _kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    state["numpy"] = {
        "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached": float(cached),
    }
    version, internal, gauss = random.getstate()
    state["python"] = {"version": version, "internal": list(internal), "gauss": gauss}
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss"]))


@dataclass
class TrainerState:
    step: int
    epoch: int
    best_metric: float | None
    best_step: int | None
    train_seconds: float


def save_checkpoint(
    stage_dir: Path,
    *,
    model: nn.Module,
    losses: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    state: TrainerState,
    keep_last: int,
) -> Path:
    name = f"step-{state.step:07d}"
    final = stage_dir / name
    tmp = stage_dir / f".{name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    save_weights(model, tmp / "model.safetensors")
    loss_state = losses.state_dict()
    if loss_state:
        save_weights(loss_state, tmp / "losses.safetensors")
    trainer = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": capture_rng(),
        "step": state.step,
        "epoch": state.epoch,
        "best_metric": state.best_metric,
        "best_step": state.best_step,
        "train_seconds": state.train_seconds,
    }
    torch.save(trainer, tmp / "trainer.pt")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    write_json(stage_dir / "latest.json", {"step": state.step, "dir": name})
    _prune(stage_dir, keep_last)
    return final


def _prune(stage_dir: Path, keep_last: int) -> None:
    steps = sorted(p for p in stage_dir.glob("step-*") if p.is_dir())
    for old in steps[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(stage_dir: Path) -> Path | None:
    pointer = stage_dir / "latest.json"
    if not pointer.exists():
        return None
    info = read_json(pointer, what="checkpoint pointer")
    path = stage_dir / info["dir"]
    if not (path / "trainer.pt").exists():
        raise RunError(
            f"checkpoint {path} named by {pointer} is incomplete",
            hint="delete the pointer to start the stage over",
        )
    return path


def load_checkpoint(
    path: Path,
    *,
    model: nn.Module,
    losses: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> TrainerState:
    model.load_state_dict(load_weights(path / "model.safetensors"))
    if (path / "losses.safetensors").exists():
        losses.load_state_dict(load_weights(path / "losses.safetensors"))
    try:
        trainer = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    except Exception as exc:
        raise RunError(f"checkpoint state {path / 'trainer.pt'} cannot be read: {exc}") from None
    optimizer.load_state_dict(trainer["optimizer"])
    scheduler.load_state_dict(trainer["scheduler"])
    if scaler is not None and trainer["scaler"] is not None:
        scaler.load_state_dict(trainer["scaler"])
    restore_rng(trainer["rng"])
    return TrainerState(
        step=trainer["step"],
        epoch=trainer["epoch"],
        best_metric=trainer["best_metric"],
        best_step=trainer["best_step"],
        train_seconds=trainer["train_seconds"],
    )


@dataclass
class StageCheckpointer:
    """Saves and resumes one stage's checkpoints under ``directory`` (``checkpoints/<stage>``):
    the model, the loss modules' state, optimizer, scheduler, scaler, RNG and :class:`TrainerState`.
    ``on_saved(step, path)`` is called after each save (the ``on_checkpoint_saved`` hook);
    only the main process (``is_main``) writes."""

    directory: Path
    model: nn.Module
    losses: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Any
    keep_last: int
    is_main: bool = True
    on_saved: Any = None

    def resume(self) -> tuple[TrainerState, Path] | None:
        """Load the latest checkpoint into the objects (and the global RNG) and return its
        state and path, or ``None`` when the stage has none."""
        path = latest_checkpoint(self.directory)
        if path is None:
            return None
        state = load_checkpoint(
            path,
            model=self.model,
            losses=self.losses,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
        )
        return state, path

    def save(self, state: TrainerState) -> Path | None:
        if not self.is_main:
            return None
        path = save_checkpoint(
            self.directory,
            model=self.model,
            losses=self.losses,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            scaler=self.scaler,
            state=state,
            keep_last=self.keep_last,
        )
        if self.on_saved is not None:
            self.on_saved(state.step, path)
        return path
