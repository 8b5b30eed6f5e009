"""Cells that train under torchrun, shared by the local (``--procs``) and Kubernetes (``--nodes``) tests.

``DDP_CELL`` trains a small linear model with DistributedDataParallel on gloo, every rank on data
of its own. At the end every rank gathers every rank's weights: ``weights`` (rank 0's, brought back)
holds them all, so a test checks that DDP kept them identical, not just that rank 0 finished.
Rank 0 logs the loss to the job's MLflow run at every step; each rank prints its checksum.
"""

from __future__ import annotations

from typing import Any

STEPS = 40

DDP_CELL = f"""
import os
import mlflow
import torch
import torch.distributed as dist

dist.init_process_group()  # no arguments: torchrun's environment says everything
rank, world = dist.get_rank(), dist.get_world_size()
torch.manual_seed(0)
model = torch.nn.Linear(4, 1)
ddp = torch.nn.parallel.DistributedDataParallel(model)
optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05)
generator = torch.Generator().manual_seed(100 + rank)  # each rank its own data
x = torch.randn(256, 4, generator=generator)
y = x @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1
losses = []
for step in range({STEPS}):
    optimizer.zero_grad()
    loss = ((ddp(x) - y) ** 2).mean()
    loss.backward()
    optimizer.step()
    losses.append(loss.item())
    if rank == 0:
        mlflow.log_metric("loss", loss.item(), step=step)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
weights = [torch.zeros_like(flat) for _ in range(world)]
dist.all_gather(weights, flat)
weights = [w.tolist() for w in weights]
print(f"checksum {{float(flat.sum()):.6f}} of rank {{rank}} on {{os.environ['LOCAL_RANK']}}/{{world}}", flush=True)
backend = dist.get_backend_config()  # no backend named: gloo for CPU tensors, nccl for CUDA ones
env = {{k: os.environ[k] for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}}
dist.destroy_process_group()
del ddp, model, optimizer, generator, flat
"""

# Rank 1 raises while rank 0 waits for it in a collective (which, left alone, waits 30 minutes).
RANK_ONE_RAISES = """
import time
import torch
import torch.distributed as dist

dist.init_process_group()
if dist.get_rank() == 1:
    time.sleep(0.5)
    raise RuntimeError("rank one is broken")
print("waiting for the others", flush=True)
dist.barrier()
print("never printed")
"""


def check_ddp_result(values: dict[str, Any], world: int) -> None:
    """What ``DDP_CELL`` brings back from rank 0 proves the training was distributed and in step."""
    assert values["world"] == world and values["rank"] == 0
    assert "cpu:gloo" in values["backend"], values["backend"]
    assert values["env"]["WORLD_SIZE"] == str(world) and values["env"]["RANK"] == "0"
    weights = values["weights"]
    assert len(weights) == world
    assert all(w == weights[0] for w in weights), f"the ranks' weights differ: {weights}"
    losses = values["losses"]
    assert len(losses) == STEPS and losses[-1] < losses[0] / 10, losses
