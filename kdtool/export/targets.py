"""Hardware target profiles: an exporter plus tuned defaults (``register_targets``)."""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class TargetProfile:
    """``kdtool export --target NAME``: which exporter, with which defaults, for what hardware.

    ``options`` are the exporter's options (validated by its options model); ``machine``
    says what hardware the artifact is tuned for: ``cpu_arch`` ("x86_64", "aarch64"),
    ``cuda`` (needs an NVIDIA GPU), ``compute_capability`` ("8.7" for Jetson Orin),
    ``os`` ("darwin").
    """

    name: str
    exporter: str
    description: str
    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=dict)

    def verifiable_here(self) -> tuple[bool, str]:
        """Whether this machine matches the profile's hardware, and if not, why."""
        arch = self.machine.get("cpu_arch")
        here = platform.machine().lower()
        if arch and arch != here and not (arch == "aarch64" and here == "arm64"):
            return (
                False,
                f"tuned for {arch}; this machine is {here}: numerics checked, latency not representative",
            )
        import torch  # here, not at import: plugins import this module while kdtool starts

        if self.machine.get("cuda") and not torch.cuda.is_available():
            return False, "needs an NVIDIA GPU; CUDA is not available here"
        cc = self.machine.get("compute_capability")
        if cc and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability()
            if f"{major}.{minor}" != str(cc):
                return False, f"built for compute capability {cc}; this GPU is {major}.{minor}"
        os_name = self.machine.get("os")
        if os_name and platform.system().lower() != os_name:
            return False, f"runs on {os_name}; this machine is {platform.system().lower()}"
        return True, ""
