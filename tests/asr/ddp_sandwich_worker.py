"""Worker of ``test_ddp_sandwich.py`` (run by torchrun, or imported for the 1-process reference):
one sandwich step (largest + 2 random subnets + smallest, KD + hard RNN-T) and one ScaledAdam
step of a tiny supernet on a fixed global batch of 4 equal-length utterances."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from kdtool_asr.models import SupernetRNNT
from kdtool_asr.optim import scaled_adam
from kdtool_asr.task import AsrData, AsrOptions, AsrSupernetTask
from torch import nn

from kdtool.engine.context import StepContext
from kdtool.losses import AlphaDivergence
from kdtool.recipe import StageConfig

ARCH: dict[str, Any] = {
    "vocab_size": 6,
    "num_mel_bins": 8,
    "head_dim": 4,
    "max_heads": 2,
    "max_layers": 3,
    "max_ffn": 8,
    "state_size": 4,
    "front_channels": 8,
    "joiner_dim": 8,
    "predictor_dim": 8,
    "layer_choices": [1, 2, 3],
    "head_choices": [1, 2],
    "ffn_choices": [4, 8],
}


def global_batch() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    return {
        "features": torch.randn(4, 24, 8, generator=gen),
        "feature_lengths": torch.full((4,), 24),
        "targets": torch.randint(1, 6, (4, 3), generator=gen),
        "target_lengths": torch.full((4,), 3),
    }


def sandwich_step(
    model: nn.Module, inner: SupernetRNNT, batch: dict[str, torch.Tensor], rank: int, world: int
) -> None:
    task = AsrSupernetTask(AsrOptions(), AsrData(), seed=0, cache_dir=Path("."))
    stage = StageConfig(
        name="supernet",
        model="supernet",
        role="supernet",
        steps=1,
        losses=[{"name": "rnnt"}, {"name": "kd", "loss": "alpha_div"}],
        options={"num_random": 2, "subnet_rnnt_weight": 0.5, "dropout_max": 0.0},
    )
    ctx = StepContext(
        device=torch.device("cpu"),
        precision="fp32",
        losses=nn.ModuleDict({"kd": AlphaDivergence()}),
        scaler=None,
        grad_accum=1,
        teacher_fn=None,
        teacher_cache=None,
        rank=rank,
        world_size=world,
    )
    ctx.use_stage(stage, task)
    ctx.begin_step(seed=0, step=5, epoch=0)
    optimizer = scaled_adam(
        [{"params": list(inner.parameters()), "param_names": [n for n, _ in inner.named_parameters()]}]
    )
    optimizer.zero_grad(set_to_none=True)
    task.training_step(stage, {"supernet": model}, batch, ctx)
    inner.grads_after_step = {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}  # type: ignore[assignment]
    optimizer.step()


def build() -> SupernetRNNT:
    torch.manual_seed(0)
    return SupernetRNNT(**ARCH)


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    inner = build()
    model = nn.parallel.DistributedDataParallel(inner)
    ddp_reductions = [0]

    # no annotation on `bucket`: DDP checks it against dist.GradBucket, and this module's
    # annotations are strings (from __future__ import annotations)
    def counting_hook(_state: Any, bucket):  # type: ignore[no-untyped-def]
        ddp_reductions[0] += 1
        fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()  # type: ignore[union-attr]
        return fut.then(lambda f: f.value()[0])

    # DDP checks the hook's annotations as objects (this module's are strings)
    counting_hook.__annotations__ = {"bucket": dist.GradBucket, "return": torch.futures.Future[torch.Tensor]}
    model.register_comm_hook(None, counting_hook)
    collectives = [0]
    original = dist.all_reduce

    def counting_all_reduce(*args: Any, **kwargs: Any) -> Any:
        collectives[0] += 1
        return original(*args, **kwargs)

    dist.all_reduce = counting_all_reduce  # type: ignore[assignment]
    per = 4 // world
    batch = {k: v[rank * per : (rank + 1) * per] for k, v in global_batch().items()}
    sandwich_step(model, inner, batch, rank, world)
    dist.all_reduce = original  # type: ignore[assignment]
    if rank == 0:
        torch.save(
            {
                "params": {n: p.detach().clone() for n, p in inner.named_parameters()},
                "grads": inner.grads_after_step,  # type: ignore[attr-defined]
                "counts": torch.tensor([ddp_reductions[0], collectives[0]]),
            },
            out,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
