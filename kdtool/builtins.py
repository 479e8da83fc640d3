"""kdtool's own registrations (losses, optimizers, schedules), made through the same hooks
a plugin uses. Registered directly (not through an entry point) under the name ``kdtool``."""

from __future__ import annotations

from kdtool.hookspecs import Register, hookimpl

KDTOOL_PLUGIN_API = "2.0"


@hookimpl
def register_losses(register: Register) -> None:
    from kdtool.losses import BUILTIN_LOSSES  # imports torch: only when registries are built

    for name, (cls, description) in BUILTIN_LOSSES.items():
        register(name, cls, description=description)


@hookimpl
def register_optimizers(register: Register) -> None:
    from kdtool.optim import BUILTIN_OPTIMIZERS, BUILTIN_SCHEDULES

    for name, factory in BUILTIN_OPTIMIZERS.items():
        register(name, factory, description=f"torch.optim {name}")
    for name, schedule in BUILTIN_SCHEDULES.items():
        register(f"schedule:{name}", schedule, description=f"{name} learning-rate schedule")
