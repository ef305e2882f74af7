"""Data-parallel training over MPI (mpi4py) or NCCL (CuPy): one small Communicator interface,
gradient averaging in flat buckets, parameter/optimizer broadcast, sharding and fault handling.
No socket code of our own: MPI (and NCCL on GPUs) move every byte.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from engine import backend
from engine.errors import MedgradError

DEFAULT_TIMEOUT = float(os.environ.get("MEDGRAD_DIST_TIMEOUT", "300"))  # seconds per collective
BUCKET_BYTES = 4 << 20  # gradients are packed into flat buckets of about this size


class DistributedError(MedgradError, RuntimeError):
    """A rank failed, hung past the timeout, or the distributed setup is missing."""


# ---- communicators ----


class Communicator:
    """What data-parallel training needs from a communication library, and nothing more.

    Array methods work in place on 1-D contiguous arrays of the training device (NumPy on "cpu",
    CuPy on "cuda"); object methods move small JSON-safe metadata. Every collective either
    completes or raises DistributedError within `timeout` seconds.
    """

    rank: int = 0
    size: int = 1
    timeout: float = DEFAULT_TIMEOUT

    def allreduce_sum(self, bufs: list) -> None:
        """Sum each array of `bufs` over all ranks, in place (all issued before any is awaited)."""
        raise NotImplementedError

    def start_allreduce_sum(self, buf):
        """Begin summing `buf` over all ranks in place; -> a handle for wait(). Every rank must
        start its allreduces in the same order. Default: done at once (handle None)."""
        self.allreduce_sum([buf])

    def wait(self, handles: list) -> None:
        """Block until the allreduces behind `handles` (from start_allreduce_sum) are done."""

    def broadcast(self, buf, root: int = 0) -> None:
        """Overwrite `buf` on every rank with root's copy, in place."""
        raise NotImplementedError

    def bcast_object(self, obj, root: int = 0):
        """Root's JSON-safe `obj` on every rank."""
        raise NotImplementedError

    def allgather_array(self, a: np.ndarray) -> list[np.ndarray]:
        """Every rank's NumPy array `a` (any shapes, same dtype), in rank order, on every rank."""
        raise NotImplementedError

    def abort(self, message: str, code: int = 1) -> None:
        """Print `message` and stop every rank now (never returns)."""
        print(message, file=sys.stderr, flush=True)
        os._exit(code)


class SingleProcess(Communicator):
    """size 1: every collective is the identity. The plain training path uses it implicitly."""

    def allreduce_sum(self, bufs):
        pass

    def broadcast(self, buf, root=0):
        pass

    def bcast_object(self, obj, root=0):
        return json.loads(json.dumps(obj))

    def allgather_array(self, a):
        return [np.asarray(a)]


class MPICommunicator(Communicator):
    """MPI_COMM_WORLD through mpi4py, for NumPy arrays (and as the control channel for NCCL).

    Collectives are non-blocking (Iallreduce, Ibcast, ...) and polled, so a rank whose peer hangs
    raises DistributedError after `timeout` seconds instead of waiting forever.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        try:
            from mpi4py import MPI
        except ImportError as exc:
            raise DistributedError(
                "--distributed needs mpi4py and an MPI library: pip install 'medgrad[distributed]'"
            ) from exc
        self.MPI, self.comm = MPI, MPI.COMM_WORLD
        self.rank, self.size, self.timeout = self.comm.Get_rank(), self.comm.Get_size(), timeout

    def _wait(self, requests: list, what: str) -> None:
        """Poll `requests` until all complete; DistributedError naming this rank after timeout."""
        deadline = time.monotonic() + self.timeout
        pause = 0.0
        while not self.MPI.Request.Testall(requests):
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {self.rank}: no answer from the other ranks within {self.timeout:g} s "
                    f"({what}): a rank hung or died (MEDGRAD_DIST_TIMEOUT sets the limit)"
                )
            time.sleep(pause)  # spin first (small steps are short), then back off to 1 ms
            pause = min(1e-3, pause + 2e-5)

    def allreduce_sum(self, bufs):
        reqs = [self.comm.Iallreduce(self.MPI.IN_PLACE, b, op=self.MPI.SUM) for b in bufs]
        self._wait(reqs, "allreduce")

    def start_allreduce_sum(self, buf):
        return self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)

    def wait(self, handles):
        self._wait(list(handles), "allreduce")

    def broadcast(self, buf, root=0):
        self._wait([self.comm.Ibcast(buf, root=root)], "broadcast")

    def _bcast_bytes(self, data: bytes | None, root: int) -> bytes:
        n = np.array([len(data) if self.rank == root else 0], dtype=np.int64)
        self.broadcast(n, root)
        buf = (
            np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(n[0], np.uint8)
        )
        self.broadcast(buf, root)
        return buf.tobytes()

    def bcast_object(self, obj, root=0):
        data = json.dumps(obj, allow_nan=True).encode() if self.rank == root else None
        return json.loads(self._bcast_bytes(data, root))

    def allgather_array(self, a):
        with io.BytesIO() as f:
            np.save(f, np.asarray(a), allow_pickle=False)
            mine = np.frombuffer(f.getvalue(), np.uint8)
        counts = np.zeros(self.size, np.int64)
        counts[self.rank] = len(mine)
        self.allreduce_sum([counts])
        out = np.empty(int(counts.sum()), np.uint8)
        displs = np.concatenate([[0], np.cumsum(counts)[:-1]])
        req = self.comm.Iallgatherv(mine, [out, counts, displs, self.MPI.BYTE])
        self._wait([req], "allgather")
        return [
            np.load(io.BytesIO(out[s : s + c].tobytes()), allow_pickle=False)
            for s, c in zip(displs, counts, strict=True)
        ]

    def abort(self, message, code=1):
        print(message, file=sys.stderr, flush=True)
        self.comm.Abort(code)  # mpiexec then stops every other rank


class NCCLCommunicator(MPICommunicator):
    """GPU arrays through NCCL (cupy.cuda.nccl); the NCCL id and all metadata travel over MPI.

    Each rank uses the GPU `rank % device count`. NCCL calls are enqueued on the current stream
    and awaited with a stream synchronize, polled against the same timeout as MPI.
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT):
        super().__init__(timeout)
        # the one place outside engine/backend.py that touches CuPy: NCCL is a communication
        # library, not a kernel flavour, and only runs when the user asked for cuda + --distributed
        import cupy
        from cupy.cuda import nccl

        self.cupy, self.nccl = cupy, nccl
        cupy.cuda.Device(self.rank % cupy.cuda.runtime.getDeviceCount()).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = tuple(self.bcast_object(list(uid) if uid is not None else None))
        self.nccl_comm = nccl.NcclCommunicator(self.size, uid, self.rank)

    def _nccl_type(self, dtype) -> int:
        types = {np.float32: self.nccl.NCCL_FLOAT32, np.float64: self.nccl.NCCL_FLOAT64}
        types[np.int64] = self.nccl.NCCL_INT64
        return types[np.dtype(dtype).type]

    def _sync(self, what: str) -> None:
        stream = self.cupy.cuda.get_current_stream()
        deadline = time.monotonic() + self.timeout
        while not stream.done:
            if time.monotonic() > deadline:
                raise DistributedError(
                    f"rank {self.rank}: NCCL {what} did not finish within {self.timeout:g} s"
                )
            time.sleep(1e-4)

    def allreduce_sum(self, bufs):
        if not bufs or isinstance(bufs[0], np.ndarray):
            return super().allreduce_sum(bufs)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.nccl.groupStart()
        for b in bufs:
            self.nccl_comm.allReduce(
                b.data.ptr, b.data.ptr, b.size, self._nccl_type(b.dtype), self.nccl.NCCL_SUM, stream
            )
        self.nccl.groupEnd()
        self._sync("allreduce")

    def start_allreduce_sum(self, buf):
        if isinstance(buf, np.ndarray):
            return super().start_allreduce_sum(buf)
        stream = self.cupy.cuda.get_current_stream().ptr  # enqueued after the backward kernels
        self.nccl_comm.allReduce(
            buf.data.ptr,
            buf.data.ptr,
            buf.size,
            self._nccl_type(buf.dtype),
            self.nccl.NCCL_SUM,
            stream,
        )
        return "nccl"

    def wait(self, handles):
        super().wait([h for h in handles if h != "nccl"])
        if "nccl" in handles:
            self._sync("allreduce")

    def broadcast(self, buf, root=0):
        if isinstance(buf, np.ndarray):
            return super().broadcast(buf, root)
        stream = self.cupy.cuda.get_current_stream().ptr
        self.nccl_comm.bcast(buf.data.ptr, buf.size, self._nccl_type(buf.dtype), root, stream)
        self._sync("broadcast")


def init(device: str = "cpu", timeout: float = DEFAULT_TIMEOUT) -> Communicator:
    """The communicator for `device`: NCCL for "cuda", MPI otherwise (both need mpiexec)."""
    return NCCLCommunicator(timeout) if device == "cuda" else MPICommunicator(timeout)


@contextlib.contextmanager
def fail_together(comm: Communicator) -> Iterator[None]:
    """Run the block; if it raises on any rank, print one line naming the rank and abort all.

    Files are only written through atomic_write, so an abort never leaves a half-written
    checkpoint. KeyboardInterrupt is passed on as a failure too (mpiexec forwards Ctrl-C).
    """
    try:
        yield
    except BaseException as exc:  # noqa: B036 - every failure must stop the other ranks
        if comm.size == 1 or isinstance(exc, SystemExit) and not exc.code:
            raise
        if os.environ.get("MEDGRAD_DEBUG"):
            import traceback

            traceback.print_exc()
        comm.abort(
            f"medgrad: rank {comm.rank} of {comm.size} failed: {type(exc).__name__}: {exc}; "
            "stopping all ranks"
        )


# ---- parameters, optimizer state, gradients ----


def _flat_state(model) -> list:
    """Every parameter array and floating buffer of `model`, in state_dict order."""
    arrays = [p.data for p in model.parameters()]
    return arrays + [b for b in model.buffers() if np.dtype(b.dtype).kind == "f"]


def broadcast_model(model, comm: Communicator, root: int = 0) -> None:
    """Copy root's parameters and floating buffers into every rank's `model`, in place."""
    for a in _flat_state(model):
        flat = a.reshape(-1)  # a view: the arrays are contiguous
        comm.broadcast(flat, root)


def broadcast_optimizer(optimizer, comm: Communicator, root: int = 0) -> None:
    """Give every rank root's optimizer state (steps, lr, momentum/Adam buffers)."""
    state = optimizer.state_dict() if comm.rank == root else {}
    layout = {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}
    layout = comm.bcast_object(layout, root)
    out = {}
    for key, (shape, dtype) in layout.items():
        buf = np.array(state[key], order="C") if comm.rank == root else np.empty(shape, dtype)
        comm.broadcast(buf.reshape(-1), root)
        out[key] = buf
    optimizer.load_state_dict(out)


def _buckets(params: list, bucket_bytes: int) -> list[list[int]]:
    """Parameter indices grouped into buckets of at most ~bucket_bytes (one dtype and device
    each), last parameter first: backward produces the last layers' gradients first."""
    buckets, current, size, key = [], [], 0, None
    for i in reversed(range(len(params))):
        p = params[i]
        k = (p.data.dtype, p.device)
        if current and (k != key or size + p.data.nbytes > bucket_bytes):
            buckets.append(current)
            current, size = [], 0
        current.append(i)
        size, key = size + p.data.nbytes, k
    return buckets + [current] if current else buckets


class DistributedOptimizer:
    """Wraps any engine optimizer: step(weight) averages gradients over ranks, then steps.

    Each rank's loss is the mean over its n_r samples of the global batch of N, so
    weight = n_r / N and sum_r weight_r * grad_r is the gradient of the global mean loss, the one
    a single process computes (exactly, up to summation order). Gradients are packed into flat
    buckets (BUCKET_BYTES), one Iallreduce each. With backward(loss, weight) (overlap=True) a
    bucket's allreduce starts as soon as backward has finished its gradients, while backward
    still runs; step() waits for them. Buckets start in bucket order on every rank (MPI needs
    one order), and the sums are those of the blocking path, bit for bit. Attributes not defined
    here (lr, steps, state_dict, ...) are the wrapped optimizer's.
    """

    def __init__(
        self, optimizer, comm: Communicator, bucket_bytes: int = BUCKET_BYTES, overlap: bool = True
    ):
        self.optimizer, self.comm, self.overlap = optimizer, comm, overlap
        self.buckets = _buckets(optimizer.params, bucket_bytes)
        self._bucket_of = {
            id(optimizer.params[i]): b for b, bk in enumerate(self.buckets) for i in bk
        }
        self._inflight = None  # during an overlapped step: weight, buckets left, flats, handles
        self.comm_seconds = 0.0  # time spent packing, in allreduce and unpacking
        self.comm_steps = 0

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):
        if name == "lr":  # the schedule sets lr on the wrapper: it belongs to the optimizer
            self.optimizer.lr = value
        else:
            super().__setattr__(name, value)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def _pack(self, bucket: list[int], weight: float):
        """weight * this rank's gradients of `bucket`, one flat array (a missing grad = 0)."""
        params = self.optimizer.params
        xp = backend.get_backend(params[bucket[0]].data).xp
        parts = [
            (params[i].grad if params[i].grad is not None else xp.zeros_like(params[i].data))
            for i in bucket
        ]
        return xp.concatenate([g.reshape(-1) for g in parts]) * weight

    def _unpack(self, flats: list) -> None:
        params = self.optimizer.params
        for bucket, flat in zip(self.buckets, flats, strict=True):
            offset = 0
            for i in bucket:
                p = params[i]
                p.grad = flat[offset : offset + p.data.size].reshape(p.data.shape)
                offset += p.data.size

    def average_gradients(self, weight: float) -> None:
        """p.grad <- sum over ranks of weight_r * p.grad_r, for every parameter (None = 0)."""
        start = time.perf_counter()
        flats = [self._pack(bucket, weight) for bucket in self.buckets]
        self.comm.allreduce_sum(flats)
        self._unpack(flats)
        self.comm_seconds += time.perf_counter() - start
        self.comm_steps += 1

    def backward(self, loss, weight: float) -> None:
        """loss.backward(), starting each bucket's allreduce (of weight * gradients) as soon as
        its gradients are final; step(weight) then waits. overlap=False: a plain backward."""
        if not self.overlap:
            loss.backward()
            return
        left = [len(bucket) for bucket in self.buckets]
        self._inflight = {"weight": weight, "left": left, "flats": [], "handles": []}
        loss.backward(on_leaf_ready=self._leaf_ready)

    def _leaf_ready(self, leaf) -> None:
        b = self._bucket_of.get(id(leaf))
        if b is None:  # a leaf that is not one of the optimizer's parameters
            return
        self._inflight["left"][b] -= 1
        self._start_ready()

    def _start_ready(self, everything: bool = False) -> None:
        """Start the allreduce of each complete bucket, in bucket order (all when everything)."""
        state = self._inflight
        start = time.perf_counter()
        while len(state["flats"]) < len(self.buckets):
            b = len(state["flats"])
            if state["left"][b] > 0 and not everything:
                break
            state["flats"].append(self._pack(self.buckets[b], state["weight"]))
            state["handles"].append(self.comm.start_allreduce_sum(state["flats"][-1]))
        self.comm_seconds += time.perf_counter() - start

    def step(self, weight: float = 1.0) -> None:
        """Average the gradients (weight = this rank's share of the global batch), then step.
        After backward(loss, weight): wait for the allreduces it started (and start the rest)."""
        if self._inflight is None:
            self.average_gradients(weight)
        else:
            assert self._inflight["weight"] == weight, "step(weight) differs from backward's"
            self._start_ready(everything=True)  # parameters the loss did not reach: zeros
            start = time.perf_counter()
            self.comm.wait(self._inflight["handles"])
            self._unpack(self._inflight["flats"])
            self._inflight = None
            self.comm_seconds += time.perf_counter() - start
            self.comm_steps += 1
        self.optimizer.step()


# ---- sharding ----


@dataclass
class Shard:
    """The samples one rank holds: local row j is global sample indices[j] of n_total.

    Every rank draws the same global order; for each global batch a rank trains on the members
    it holds (local_rows) and weighs its gradient by their share of the batch.
    """

    indices: np.ndarray
    n_total: int
    rank: int = 0
    size: int = 1

    def __post_init__(self):
        self._position = np.full(self.n_total, -1, dtype=np.int64)
        self._position[self.indices] = np.arange(len(self.indices))

    def local_rows(self, global_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(local rows, global indices) of the members of global_idx this rank holds, in order."""
        pos = self._position[global_idx]
        keep = pos >= 0
        return pos[keep], global_idx[keep]


def shard_of(groups: np.ndarray, rank: int, size: int) -> np.ndarray:
    """Indices (sorted) of the samples whose patient falls to `rank` of `size` (by patient)."""
    from engine.data.splits import shard_by_group

    return np.flatnonzero(shard_by_group(groups, size) == rank)


# ---- the sharded epoch and the gathered validation (engine.train.fit calls these) ----


def _augment_each(augment, x: np.ndarray, global_idx: np.ndarray, seed: int, epoch: int):
    """Augment sample by sample with Generator([seed, epoch, global index]): the same draws for
    a sample whatever rank holds it, so N ranks augment exactly as one process does."""
    out = [
        augment(x[j : j + 1], np.random.default_rng([seed, epoch, int(g)]))
        for j, g in enumerate(global_idx)
    ]
    return np.concatenate(out).astype(x.dtype, copy=False)  # Augment returns float32


def train_epoch_sharded(
    model,
    optimizer: DistributedOptimizer,
    x,
    y,
    shard: Shard,
    batch_size: int,
    rng,
    *,
    seed: int = 0,
    epoch: int = 0,
    on_batch=None,
    augment=None,
):
    """One data-parallel pass: global batches from `rng` (the same on every rank), each rank
    trains on the members it holds; returns the global mean loss and accuracy.

    x, y: this rank's rows (shard.indices); a rank holding none of a batch still joins the
    allreduce with zero gradients. Dropout streams are reseeded per (seed, epoch, rank).
    """
    import engine.functional as F
    from engine.train import DivergedError, batches, model_rngs, on_device_of

    model.train()
    for i, module in enumerate(model_rngs(model)):
        module.rng = np.random.default_rng([seed, epoch, shard.rank, i])
    sums = np.zeros(2)  # summed loss and correct predictions over this rank's samples
    for idx in batches(shard.n_total, batch_size, rng):
        rows, global_idx = shard.local_rows(idx)
        optimizer.zero_grad()
        if len(rows):
            xb = (
                x[rows]
                if augment is None
                else _augment_each(augment, x[rows], global_idx, seed, epoch)
            )
            yb = on_device_of(model, y[rows]).data
            logits = model(on_device_of(model, xb))
            loss = F.softmax_cross_entropy(logits, yb, ignore_index=None)
            value = loss.item()
            if not np.isfinite(value):
                raise DivergedError(
                    f"the training loss on rank {shard.rank} became {value}: non-finite inputs, "
                    "bad labels or a learning rate too high"
                )
            optimizer.backward(loss, len(rows) / len(idx))  # allreduces start during backward
            sums += [value * len(rows), float((logits.data.argmax(axis=1) == yb).sum())]
        optimizer.step(len(rows) / len(idx))
        if on_batch is not None:
            on_batch(value if len(rows) else float("nan"))
    optimizer.comm.allreduce_sum([sums])
    return sums[0] / shard.n_total, sums[1] / shard.n_total


def evaluate_gathered(model, x, y, comm: Communicator, batch_size: int = 256) -> dict:
    """engine.train.evaluate over the union of every rank's (x, y): logits and labels are
    gathered, so the metrics are those of the whole validation set, identical on every rank."""
    import engine.functional as F
    from engine import metrics
    from engine.train import predict_logits, softmax

    logits = predict_logits(model, x, batch_size) if len(x) else np.zeros((0, 0))
    gathered = [a for a in comm.allgather_array(logits) if a.size]
    logits = np.concatenate(gathered)
    labels = np.concatenate(comm.allgather_array(np.asarray(y, dtype=np.int64)))
    loss = F.softmax_cross_entropy(logits, labels, ignore_index=None).item()
    return {"loss": loss, **metrics.summary(labels, softmax(logits))}
