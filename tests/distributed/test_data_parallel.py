"""Data-parallel training: N ranks under mpiexec give one process's model (float64, 1e-10),
faults stop every rank with one message naming the rank, and the helpers shard by patient."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from engine import backend
from engine.data.splits import shard_by_group
from engine.distributed import DistributedOptimizer, Shard, SingleProcess, _buckets
from tests.distributed.cases import case_data, fit_case

SCRIPT = "tests/distributed/_fit_script.py"
NUMPY = {"ENGINE_KERNELS": "numpy"}  # no Numba compile per rank: the kernels are not under test


def _single(**kw):
    with backend.use_kernels("numpy"):
        return fit_case(**kw)


def _assert_same(model, path, history):
    saved = np.load(path)
    for name, w in model.state_dict().items():
        np.testing.assert_allclose(saved[name], w, rtol=0, atol=1e-10, err_msg=name)
    ranks = json.loads(str(saved["history"]))
    for key, values in history.epochs.items():
        np.testing.assert_allclose(ranks[key], values, rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_two_ranks_equal_one_process_float64(mpirun, tmp_path, optimizer):
    # uneven shards: rank 0 and 1 hold different numbers of images in most batches
    out = tmp_path / "w.npz"
    done = mpirun(2, [SCRIPT, str(out), json.dumps({"optimizer": optimizer})], **NUMPY)
    assert done.returncode == 0, done.stderr
    model, history = _single(optimizer=optimizer)
    _assert_same(model, out, history)
    assert history.epochs["loss"][1] < history.epochs["loss"][0]  # it did train


def test_augmentation_same_for_one_and_two_ranks(mpirun, tmp_path):
    # per-sample streams keyed by (seed, epoch, image): the rank count does not change them
    paths = [tmp_path / "n1.npz", tmp_path / "n2.npz"]
    for n, path in zip((1, 2), paths, strict=True):
        done = mpirun(n, [SCRIPT, str(path), json.dumps({"augment": True, "epochs": 1})], **NUMPY)
        assert done.returncode == 0, done.stderr
    one, two = np.load(paths[0]), np.load(paths[1])
    plain, _ = _single(epochs=1)
    for name in plain.state_dict():
        np.testing.assert_allclose(two[name], one[name], rtol=0, atol=1e-10, err_msg=name)
    assert any(not np.allclose(one[k], w) for k, w in plain.state_dict().items())


def test_resume_from_rank0_checkpoint(mpirun, tmp_path):
    # 1 epoch, then resume to 2 on two ranks: the same model as 2 epochs in one process
    run = tmp_path / "run"
    first = mpirun(
        2,
        [SCRIPT, str(tmp_path / "a.npz"), json.dumps({"epochs": 1, "run_dir": str(run)})],
        **NUMPY,
    )
    assert first.returncode == 0, first.stderr
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.npz", "metrics.json", "model.npz"]
    args = {"epochs": 2, "run_dir": str(run), "resume": True}
    second = mpirun(2, [SCRIPT, str(tmp_path / "b.npz"), json.dumps(args)], **NUMPY)
    assert second.returncode == 0, second.stderr
    model, history = _single(epochs=2)
    _assert_same(model, tmp_path / "b.npz", history)


def test_diverged_rank_stops_all_with_its_name(mpirun, tmp_path):
    start = time.monotonic()
    done = mpirun(2, [SCRIPT, str(tmp_path / "w.npz"), json.dumps({"fail_rank": 1})], **NUMPY)
    assert done.returncode != 0
    assert "rank 1 of 2 failed: DivergedError" in done.stderr
    assert not (tmp_path / "w.npz").exists()
    assert time.monotonic() - start < 50  # generous: it stops at the first step, not at a timeout


def test_hung_rank_caught_by_timeout(mpirun, tmp_path):
    args = [SCRIPT, str(tmp_path / "w.npz"), json.dumps({"hang_rank": 1}), "2"]
    done = mpirun(2, args, timeout=50, **NUMPY)
    assert done.returncode != 0
    assert "rank 0 of 2 failed: DistributedError: rank 0: no answer" in done.stderr


def test_killed_rank_stops_all(mpirun, tmp_path):
    # rank 1 kills itself with SIGKILL in the middle of training: mpiexec stops rank 0 and names
    # the dead rank; the run directory holds no half-written file
    run = tmp_path / "run"
    args = {"epochs": 3, "run_dir": str(run), "kill_rank": 1}
    done = mpirun(2, [SCRIPT, str(tmp_path / "w.npz"), json.dumps(args)], timeout=50, **NUMPY)
    assert done.returncode != 0
    assert "rank 1" in done.stderr and ("signal 9" in done.stderr or "Killed" in done.stderr)
    assert not list(run.glob(".*.tmp"))


def test_shard_by_group_keeps_patients_whole_and_balances():
    _, _, groups = case_data()
    ranks = shard_by_group(groups, 3)
    for g in np.unique(groups):
        assert len(set(ranks[groups == g])) == 1
    counts = np.bincount(ranks, minlength=3)
    assert counts.sum() == len(groups) and counts.max() - counts.min() <= 6  # one patient's worth
    renamed = shard_by_group(np.array([f"p{g * 7 % 11}" for g in groups]), 3)
    np.testing.assert_array_equal(renamed, ranks)  # names do not matter, only sizes and order


def test_shard_local_rows_in_batch_order():
    shard = Shard(np.array([1, 4, 5, 8]), 10)
    rows, global_idx = shard.local_rows(np.array([8, 0, 4, 9, 1]))
    np.testing.assert_array_equal(rows, [3, 1, 0])
    np.testing.assert_array_equal(global_idx, [8, 4, 1])


def test_buckets_cover_each_parameter_once():
    from engine.nn import Parameter

    params = [Parameter(np.zeros(n)) for n in (10, 300, 5, 200)] + [
        Parameter(np.zeros(3, np.float32))
    ]
    buckets = _buckets(params, bucket_bytes=2500)
    assert sorted(i for b in buckets for i in b) == list(range(5))
    assert buckets[0] == [4]  # a dtype change closes a bucket; the last parameter comes first
    assert all(sum(params[i].data.nbytes for i in b) <= 2500 or len(b) == 1 for b in buckets)


def test_distributed_optimizer_single_process_scales_and_fills_missing_grads():
    from engine import optim
    from engine.nn import Parameter

    a, b = Parameter(np.ones(3)), Parameter(np.ones(2))
    a.grad = np.array([1.0, 2.0, 3.0])
    opt = DistributedOptimizer(optim.SGD([a, b], lr=0.5), SingleProcess())
    opt.step(0.5)  # weight 0.5: this "rank" held half of the global batch
    np.testing.assert_allclose(a.data, 1 - 0.5 * 0.5 * np.array([1.0, 2.0, 3.0]))
    np.testing.assert_allclose(b.grad, 0.0)
    opt.lr = 0.1
    assert opt.optimizer.lr == 0.1 and opt.steps == 1


@pytest.mark.gpu
def test_nccl_one_rank_equals_one_process(mpirun, tmp_path):
    # the NCCL path (engine.distributed.NCCLCommunicator): N=1 still packs, allreduces through
    # NCCL and unpacks every bucket; float64 on the GPU, against a plain run on the same GPU
    pytest.importorskip("cupy")
    if "cuda" not in {name.split(":")[0] for name in backend.available()}:
        pytest.skip("no CUDA device")
    out = tmp_path / "w.npz"
    done = mpirun(1, [SCRIPT, str(out), json.dumps({"device": "cuda"})], timeout=300)
    assert done.returncode == 0, done.stderr
    model, history = fit_case(device="cuda")
    _assert_same(model, out, history)


def test_overlapped_allreduce_bit_identical_to_blocking(mpirun, tmp_path):
    # small buckets (several per step), started during backward vs all after it: the same sums
    paths = {overlap: tmp_path / f"{overlap}.npz" for overlap in (True, False)}
    for overlap, path in paths.items():
        options = {"overlap": overlap, "bucket_bytes": 2048, "optimizer": "sgd"}
        done = mpirun(2, [SCRIPT, str(path), json.dumps(options)], **NUMPY)
        assert done.returncode == 0, done.stderr
    started, blocking = np.load(paths[True]), np.load(paths[False])
    for name in blocking.files:
        np.testing.assert_array_equal(started[name], blocking[name], err_msg=name)
    model, history = _single(optimizer="sgd")
    _assert_same(model, paths[True], history)


class _Recording(SingleProcess):
    """A one-rank communicator that notes, at each started allreduce, the bucket's size and how
    many of the watched parameters backward had not yet given a gradient."""

    def __init__(self, params):
        self.params, self.started = params, []

    def start_allreduce_sum(self, buf):
        self.started.append((buf.size, sum(p.grad is None for p in self.params)))


def test_buckets_start_in_order_while_backward_runs():
    import models
    from engine import Tensor, optim
    from engine.functional import softmax_cross_entropy

    model = models.get("seed_cnn", in_channels=1, input_size=12, num_classes=2).astype(np.float64)
    params = model.parameters()
    comm = _Recording(params)
    opt = DistributedOptimizer(optim.SGD(params, lr=0.1), comm, bucket_bytes=2048)
    assert len(opt.buckets) >= 3
    x, y, _ = case_data()
    with backend.use_kernels("numpy"):
        loss = softmax_cross_entropy(model(Tensor(x[:4])), y[:4])
        opt.zero_grad()
        opt.backward(loss, 0.5)
    sizes = [sum(params[i].data.size for i in b) for b in opt.buckets]
    assert [size for size, _ in comm.started] == sizes  # each bucket once, in bucket order
    assert comm.started[0][1] > 0  # the first began before backward reached the first layers
    assert comm.started[-1][1] == 0
    expected = [0.5 * p.grad.copy() for p in params]
    opt.step(0.5)  # waits (nothing to wait for here), unpacks the weighted sums, steps
    for p, g in zip(params, expected, strict=True):
        np.testing.assert_array_equal(p.grad, g)


def test_on_leaf_ready_fires_once_per_leaf_with_its_final_grad():
    from engine import Tensor

    rng = np.random.default_rng(0)
    w, b = (Tensor(rng.standard_normal(3), requires_grad=True) for _ in range(2))
    x = Tensor(rng.standard_normal(3))
    seen = []
    h = ((x * w + b) * w).sum()  # w is used twice, late and early: ready only after both
    h.backward(on_leaf_ready=lambda leaf: seen.append((leaf, leaf.grad.copy())))
    assert [leaf is w for leaf, _ in seen] == [False, True]  # b first, w once, after both uses
    for leaf, grad in seen:
        np.testing.assert_array_equal(grad, leaf.grad)  # final when the hook fired
    np.testing.assert_allclose(w.grad, 2 * x.data * w.data + b.data)
