"""DistributedDataParallel with 2 gloo processes on the CPU gives the single-process gradient of the global batch."""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

pytest.importorskip("sklearn", reason="the digits dataset needs scikit-learn (pip install contres[train])")

from contres import train  # noqa: E402
from contres._subprocess import assert_same_contres, contres_file  # noqa: E402

from conftest import assert_close_rel  # noqa: E402

WORLD_SIZE = 2
GLOBAL_BATCH = 16

if not dist.is_available():
    pytest.skip("torch.distributed is not available", allow_module_level=True)


def _config():
    # GroupNorm: BatchNorm normalises each process's shard by itself, so only a batch-independent model gives
    # the single-process gradient exactly. The smoothness term checks that the regulariser is averaged too.
    return train.default_config(widths=[4, 8], n_steps=3, n_controls=2, interp="linear", norm="group",
                                smoothness_weight=0.1, epochs=1, batch_size=64, progress=False)


def _model_and_batch(config):
    torch.manual_seed(0)
    data = train.load_digits()
    model = train.build_model(config, data.in_channels, data.num_classes)
    with torch.no_grad():  # distinct controls in time, so that the smoothness gradient is not zero
        for block in model.blocks:
            block.weight.add_(0.05 * torch.randn_like(block.weight))
    return model, data, data.train_x[:GLOBAL_BATCH], data.train_y[:GLOBAL_BATCH]


def _gradients(model, x, y, config) -> dict:
    loss, _ = train.compute_loss(model, x, y, config.smoothness_weight)
    loss.backward()
    inner = getattr(model, "module", model)
    return {name: p.grad.detach().clone() for name, p in inner.named_parameters()}


def _worker(rank: int, port: int, out_dir: str, parent_contres: str) -> None:
    assert_same_contres(parent_contres)  # spawn copies the parent's sys.path; this says it found the same copy
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD_SIZE))
    torch.set_num_threads(1)
    ctx, device = train.init_distributed(torch.device("cpu"))
    assert (ctx.rank, ctx.world_size) == (rank, WORLD_SIZE) and dist.get_backend() == "gloo"
    config = _config()
    model, data, x, y = _model_and_batch(config)
    net = train.wrap_model(model, ctx, device)
    shard = slice(rank * GLOBAL_BATCH // WORLD_SIZE, (rank + 1) * GLOBAL_BATCH // WORLD_SIZE)
    grads = _gradients(net, x[shard], y[shard], config)
    # and the whole command path (sampler shards, all-reduced loss) on a small subset of the digits
    small = train.Data(data.train_x[:256], data.train_y[:256], data.test_x[:64], data.test_y[:64], 10)
    result = train.run(config, data=small, log=lambda *_: None)
    # multilevel: refine() replaces the parameters, so the DistributedDataParallel wrapper is made anew
    multilevel = train.run(train.default_config(**{**vars(config), "n_steps": 4, "epochs": 2, "refine_at": [1]}),
                           data=small, log=lambda *_: None)
    torch.save({"grads": grads, "result": result, "multilevel": multilevel},
               os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_gradients_equal_single_process(tmp_path):
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), contres_file()), nprocs=WORLD_SIZE, join=True)
    config = _config()
    model, _, x, y = _model_and_batch(config)
    expected = _gradients(model, x, y, config)
    outputs = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(WORLD_SIZE)]
    for rank, out in enumerate(outputs):
        assert out["grads"].keys() == expected.keys()
        for name, g in expected.items():
            assert_close_rel(out["grads"][name], g, 1e-5, f"rank {rank}: {name}")
    r0, r1 = (out["result"] for out in outputs)
    assert r0["world_size"] == WORLD_SIZE
    assert r0["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-12)  # the loss is all-reduced
    assert r0["test_accuracy"] == r1["test_accuracy"]  # the replicas stayed identical
    m0, m1 = (out["multilevel"] for out in outputs)
    assert m0["steps_curve"] == [2, 4] and m0["loss_curve"] == pytest.approx(m1["loss_curve"], rel=1e-12)
    assert m0["test_accuracy"] == m1["test_accuracy"]
