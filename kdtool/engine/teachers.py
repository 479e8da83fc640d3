"""Frozen teachers from files made elsewhere: ONNX (through onnxruntime) and ``.pt2``.

Paths in a recipe resolve against the working directory (not the recipe's folder); errors
name the resolved path. ONNX is the safe format (onnxruntime runs no code from the file);
a ``.pt2`` archive that needs pickle is refused unless trusted (:mod:`kdtool.pt2`).

They are wrapped as ``nn.Module``s so a task calls every teacher the same way. Their
``kdtool_source`` attribute ("onnx", "program") tells a task that they take deploy inputs
(what exported models take) rather than training inputs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from kdtool.errors import RecipeError


class OnnxTeacher(nn.Module):
    """An ONNX model as a frozen teacher. Outputs come back as float tensors on the input's device."""

    kdtool_source = "onnx"

    def __init__(self, path: Path, device: torch.device | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        from kdtool.pt2 import describe_path, quiet_third_party

        if not path.exists():
            raise RecipeError(f"ONNX teacher not found: {describe_path(path)}")
        providers = ["CPUExecutionProvider"]
        if (
            device is not None
            and device.type == "cuda"
            and "CUDAExecutionProvider" in ort.get_available_providers()
        ):
            providers.insert(0, "CUDAExecutionProvider")
        so = ort.SessionOptions()
        so.log_severity_level = 3
        try:
            with quiet_third_party():
                self.session = ort.InferenceSession(str(path), so, providers=providers)
        except Exception as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise RecipeError(f"cannot load ONNX teacher {describe_path(path)}: {first}") from None
        self.path = path
        self.input_meta = [(i.name, i.shape, i.type) for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]
        meta = self.session.get_modelmeta().custom_metadata_map
        self.labels: list[str] | None = json.loads(meta["labels"]) if "labels" in meta else None

    def forward(self, *inputs: torch.Tensor) -> Any:
        if len(inputs) != len(self.input_meta):
            raise RecipeError(
                f"ONNX teacher {self.path} takes {len(self.input_meta)} inputs, got {len(inputs)}"
            )
        feed = {}
        for (name, _shape, kind), x in zip(self.input_meta, inputs, strict=True):
            array = x.detach().cpu().numpy()
            feed[name] = array.astype(np.float32) if "float" in kind else array.astype(np.int64)
        outs = [torch.from_numpy(np.asarray(o)).to(inputs[0].device) for o in self.session.run(None, feed)]
        return outs[0] if len(outs) == 1 else tuple(outs)


class ProgramTeacher(nn.Module):
    """A ``torch.export`` program (``.pt2``) as a frozen teacher.

    The program's module does not support ``.eval()``/``.to()``, so it is held outside the
    module tree and run on the device it was exported for (the CPU unless saved otherwise).
    Loading refuses archives whose parts need pickle unless ``trust`` (the teacher's
    ``trust_code: true``) or ``kdtool --trust`` allows it: see :mod:`kdtool.pt2`.
    """

    kdtool_source = "program"

    def __init__(self, path: Path, *, trust: bool = False) -> None:
        super().__init__()
        from kdtool.pt2 import load_program

        program = load_program(path, trust=trust, what="program teacher")
        self.path = path
        self._program = [program.module()]

    def forward(self, *inputs: torch.Tensor) -> Any:
        device = inputs[0].device
        out = self._program[0](*[x.cpu() for x in inputs])
        if isinstance(out, tuple | list):
            return tuple(o.to(device) for o in out)
        return out.to(device)


def load_program_teacher(path: Path, *, trust: bool = False) -> nn.Module:
    return ProgramTeacher(path, trust=trust)
