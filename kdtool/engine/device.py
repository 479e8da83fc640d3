"""Device and precision resolution."""

from __future__ import annotations

import torch

from kdtool.errors import RecipeError


def resolve_device(spec: str, local_rank: int = 0) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU; ``cuda`` means this process's local GPU."""
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RecipeError(
                f"device {spec!r} asked for, but CUDA is not available here", hint="use device: auto or cpu"
            )
        return torch.device("cuda", local_rank) if spec == "cuda" else torch.device(spec)
    if spec == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise RecipeError(
                "device 'mps' asked for, but MPS is not available here", hint="use device: auto or cpu"
            )
    return torch.device(spec)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16-mixed" and device.type != "cuda":
        raise RecipeError(
            f"precision fp16-mixed needs CUDA, but training runs on {device.type}",
            hint="use bf16-mixed or fp32 on this device",
        )
