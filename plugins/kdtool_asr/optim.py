"""ScaledAdam and the Eden schedule (icefall / Zipformer), registered as ``scaled_adam`` and
``schedule:eden`` (recipes name it ``schedule: {name: eden}``).

ScaledAdam, per parameter tensor p with gradient g at step t (bias-corrected second moment v):

    rms      = max(sqrt(mean(p^2)), param_min_rms)
    step     = -lr * rms * g / (sqrt(v / (1 - beta2^t)) + eps)           (Adam direction, RMS-scaled)
    s        = sum(p * g)                                                (d loss / d log-scale of p)
    scale    = -lr * scalar_lr_scale * s / (sqrt(w / (1 - beta2^t)) + eps)  (w: second moment of s)
    scale    = 0 if (rms >= param_max_rms and scale > 0) or (rms <= param_min_rms and scale < 0)
    delta    = beta1 * delta + (1 - beta1) * (step + scale * p)
    p       += delta

so the scale of p is learnt through a step along p itself while its RMS stays within
[param_min_rms, param_max_rms] (no separate scale parameter).

Zero-initialised tensors. With the RMS clamped at ``param_min_rms`` (1e-5), a tensor that
starts at zero (a LayerNorm bias) takes steps of lr * 1e-5 and never trains: measured, a bias
moved 3e-4 in 600 steps. icefall sidesteps this by initialising biases small but non-zero;
here the optimizer handles it, so every model gets it: tensors of at most one dimension
(biases, norm gains, per-channel skips) use ``max(rms, vector_min_rms)`` as their step scale.
With the default ``vector_min_rms = scalar_lr_scale = 0.1`` a zero bias takes plain-Adam steps
of ``lr * scalar_lr_scale`` (exactly the scalar group's step) until its RMS exceeds 0.1, from
where the usual RMS-relative step takes over (continuous at the switch). Weight matrices are
unaffected. ``vector_min_rms: 0`` restores the plain icefall rule.

Tensors with one element, and groups marked ``scalar: True`` (the task puts an SSM's dt and
A there), take plain Adam steps (first moment folded into ``delta`` the same way) at
``lr * scalar_lr_scale``.

Clipping (``clipping_scale``): before the step the gradients' norm, with each non-scalar
tensor's gradient multiplied by its RMS, is compared with ``clipping_scale`` times the median
of the norms of the last ``clipping_history`` steps (including this one); above it, all
gradients are scaled down to the threshold. This is the run's only gradient clipping (leave
the stage's ``grad_clip`` unset). icefall's extras (parameter-change logging, batched
updates, a threshold refreshed every 100 steps rather than each step) are omitted.

Eden: lr = base_lr * ((b^2 + B^2)/B^2)^-0.25 * ((e^2 + E^2)/E^2)^-0.25 * w(b), with b the
optimizer step, e = b / steps_per_epoch the (fractional) epoch, B = ``lr_batches``,
E = ``lr_epochs``, and a linear warm-up w(b) from ``warmup_start`` to 1 over the first
``warmup_batches`` steps (the stage's ``schedule.warmup_steps`` when given). icefall's
defaults (7500, 3.5, 500) assume hundreds of thousands of steps; recipes rescale them.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

SCALAR_NAME_PARTS = ("log_dt", "log_a_re", "a_im")


class ScaledAdam(Optimizer):
    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.03,
        betas: tuple[float, float] = (0.9, 0.98),
        eps: float = 1e-8,
        scalar_lr_scale: float = 0.1,
        param_min_rms: float = 1e-5,
        param_max_rms: float = 3.0,
        clipping_scale: float | None = 2.0,
        clipping_history: int = 100,
        weight_decay: float = 0.0,
        vector_min_rms: float | None = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "scalar_lr_scale": scalar_lr_scale,
            "param_min_rms": param_min_rms,
            "param_max_rms": param_max_rms,
            "scalar": False,
            "weight_decay": weight_decay,
            "vector_min_rms": scalar_lr_scale if vector_min_rms is None else vector_min_rms,
        }
        super().__init__(params, defaults)
        self.clipping_scale = clipping_scale
        self.clipping_history = clipping_history

    # The clipping history lives in the state of the first parameter so that it is saved with
    # the optimizer's state_dict (exact resume).
    def _clip_state(self) -> dict[str, Any]:
        first = self.param_groups[0]["params"][0]
        return self.state[first]

    def _is_scalar(self, group: dict[str, Any], p: torch.Tensor) -> bool:
        return bool(group["scalar"]) or p.numel() == 1

    @staticmethod
    def _step_rms(group: dict[str, Any], p: torch.Tensor, rms: float) -> float:
        """The RMS that scales ``p``'s step: clamped at ``param_min_rms``, and for vectors
        (biases, norms) at ``vector_min_rms`` so that zero-initialised ones train."""
        floor = group["param_min_rms"]
        if p.dim() <= 1:
            floor = max(floor, group.get("vector_min_rms", 0.0))
        return max(rms, floor)

    @torch.no_grad()
    def clip_factor(self) -> float:
        """Scale applied to this step's gradients (1.0 when not clipping); updates the history."""
        if not self.clipping_scale:
            return 1.0
        sumsq = torch.zeros(())
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.float()
                if self._is_scalar(group, p):
                    sumsq = sumsq + (g**2).sum().cpu()
                else:
                    rms = self._step_rms(group, p, float(p.float().pow(2).mean().sqrt()))
                    sumsq = sumsq + ((g * rms) ** 2).sum().cpu()
        norm = float(sumsq.sqrt())
        state = self._clip_state()
        history = state.get("norm_history")
        if history is None:
            history = torch.zeros(0)
        history = torch.cat([history, torch.tensor([norm])])[-self.clipping_history :]
        state["norm_history"] = history
        threshold = self.clipping_scale * float(history.median())
        if norm > threshold > 0:
            state["num_clipped"] = state.get("num_clipped", 0) + 1
            return threshold / norm
        return 1.0

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        factor = self.clip_factor()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad.float() * factor
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros(())
                    state["delta"] = torch.zeros_like(p, dtype=torch.float32)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.float32)
                    if not self._is_scalar(group, p):
                        state["scale_exp_avg_sq"] = torch.zeros((), device=p.device)
                state["step"] += 1
                t = float(state["step"])
                bias2 = 1.0 - beta2**t
                state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (state["exp_avg_sq"] / bias2).sqrt().add_(eps)
                delta = state["delta"]
                delta.mul_(beta1)
                if self._is_scalar(group, p):
                    delta.add_(grad / denom, alpha=-(1 - beta1) * lr * group["scalar_lr_scale"])
                else:
                    pf = p.float()
                    rms = float(pf.pow(2).mean().sqrt())
                    step_dir = grad / denom * (-lr * self._step_rms(group, p, rms))
                    scale_grad = (pf * grad).sum()
                    state["scale_exp_avg_sq"].mul_(beta2).add_(scale_grad**2 * (1 - beta2))
                    scale_denom = (state["scale_exp_avg_sq"] / bias2).sqrt() + eps
                    scale_step = float(-lr * group["scalar_lr_scale"] * scale_grad / scale_denom)
                    if (rms >= group["param_max_rms"] and scale_step > 0) or (
                        rms <= group["param_min_rms"] and scale_step < 0
                    ):
                        scale_step = 0.0
                    delta.add_(step_dir + scale_step * pf, alpha=1 - beta1)
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(delta.to(p.dtype))
        return loss


def scaled_adam(
    param_groups: list[dict[str, Any]], lr: float = 0.03, weight_decay: float = 0.0, **options: Any
) -> ScaledAdam:
    """Factory for ``register_optimizers``: splits scalar-like SSM parameters (dt, A: names
    containing ``log_dt``, ``log_a_re``, ``a_im``) into a plain-Adam group."""
    groups: list[dict[str, Any]] = []
    for group in param_groups:
        params = list(group["params"])
        names = list(group.get("param_names", [""] * len(params)))
        rest = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        normal = [
            (n, p) for n, p in zip(names, params, strict=True) if not any(s in n for s in SCALAR_NAME_PARTS)
        ]
        scalar = [
            (n, p) for n, p in zip(names, params, strict=True) if any(s in n for s in SCALAR_NAME_PARTS)
        ]
        if normal:
            groups.append({**rest, "params": [p for _, p in normal], "scalar": False})
        if scalar:
            groups.append({**rest, "params": [p for _, p in scalar], "scalar": True})
    return ScaledAdam(groups, lr=lr, weight_decay=weight_decay, **options)


def eden_factor(
    step: int,
    *,
    steps_per_epoch: int,
    lr_batches: float,
    lr_epochs: float,
    warmup_batches: int,
    warmup_start: float = 0.5,
) -> float:
    epoch = step / max(1, steps_per_epoch)
    factor = ((step**2 + lr_batches**2) / lr_batches**2) ** -0.25 * (
        (epoch**2 + lr_epochs**2) / lr_epochs**2
    ) ** -0.25
    if warmup_batches > 0 and step < warmup_batches:
        factor *= warmup_start + (1.0 - warmup_start) * step / warmup_batches
    return factor


def eden(
    optimizer: Optimizer,
    *,
    total_steps: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    lr_batches: float = 7500.0,
    lr_epochs: float = 3.5,
    warmup_batches: int = 500,
    warmup_start: float = 0.5,
    **_: Any,
) -> LRScheduler:
    """Factory for ``schedule:eden`` (stepped once per optimizer step)."""
    warm = warmup_steps or warmup_batches
    return LambdaLR(
        optimizer,
        lambda step: eden_factor(
            step,
            steps_per_epoch=steps_per_epoch,
            lr_batches=lr_batches,
            lr_epochs=lr_epochs,
            warmup_batches=warm,
            warmup_start=warmup_start,
        ),
    )
