"""Captured training steps (issue 16): forward, loss, backward and the optimizer update recorded once
as a CUDA graph and replayed for every batch, the batch copied into static input buffers.

`step = capture(model, loss_fn, optimizer, example_batch)` returns a Step; `step(x, t)` trains on one
batch and returns its loss. Where a graph cannot be recorded the Step runs the same eager step and
says why in ONE CaptureWarning (engine.errors) naming the op or the reason:
- the CPU flavours have no graphs ("capture: numba_cpu has no graphs");
- only the cupy flavour is captured, and only with its own GEMM kernels selected: CuPy refuses to
  capture cuBLAS ("capture: cuBLAS GEMM in conv2d_forward"; engine.backend.capture_blocker);
- fp16 loss scaling decides on the host whether to skip a step; Dropout draws masks on the host;
- anything that fails while recording (a host sync: .get(), float(), .item(), cupy.asnumpy, or an
  allocation CuPy cannot make) names the innermost op that was running.

How the graph is made (cupy flavour on a GPU): the first call for a batch shape runs one eager step
on that batch (the warm-up: kernels compiled, optimizer buffers allocated, and a real training step),
then records the step on a non-blocking stream into a cupy.cuda.Graph. The recording allocates from
a memory pool of its own that nothing else uses, so every array the graph writes (activations,
gradients, the loss) keeps its address across replays; the pool lives as long as the Step. The
learning rate and the step number the update kernels read sit in 0-d device arrays refilled before
each replay (Optimizer.device_hyper), so schedules and Adam's bias correction stay right.
A batch of another size (the last, short batch of an epoch) is recorded as a graph of its own, at
most MAX_SHAPES of them; a batch whose shape differs beyond the batch axis is an ArgumentError.
The results are those of the eager step: the same kernels on the same data.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Callable

import numpy as np

from engine import amp, backend
from engine.errors import ArgumentError, CaptureWarning
from engine.function import Function, no_grad
from engine.tensor import Tensor

MAX_SHAPES = 4  # graphs per Step, one per batch shape (full batches and the epoch's last one)


def eager_step(model, loss_fn, optimizer, x, t, scaler=None):
    """One plain training step on device arrays x (n, ...) and t (n, ...): zero_grad, forward,
    loss_fn(logits, t), backward, update (through `scaler` under fp16). Returns (loss, logits),
    the 0-d loss array and the logits array, on the model's device."""
    logits = model(Tensor(x))
    loss = loss_fn(logits, t)
    amp.backward_step(loss, optimizer, scaler)
    return loss.data, logits.data


def _device_of(model) -> str:
    params = model.parameters()
    return params[0].device if params else "cpu"


def _innermost_op(exc: BaseException) -> str | None:
    """The name of the innermost Function running when `exc` was raised (from its traceback)."""
    name = None
    for frame, _ in traceback.walk_tb(exc.__traceback__):
        owner = frame.f_locals.get("self")
        if isinstance(owner, Function):
            name = owner.name
    return name


class Step:
    """A training step for one model, loss and optimizer: `step(x, t) -> loss`.

    x: the inputs (n, ...) and t: the targets (n, ...), NumPy or arrays of the model's device,
    shaped as example_batch beyond the batch axis. Returns the loss as a 0-d array on the model's
    device, without a host sync (float(loss) syncs); `self.logits` holds the step's logits until
    the next call. `captured` tells whether calls replay a CUDA graph; `reason` says why not.
    """

    def __init__(self, model, loss_fn: Callable, optimizer, example_batch, scaler=None):
        self.model, self.loss_fn, self.optimizer, self.scaler = model, loss_fn, optimizer, scaler
        self.device = _device_of(model)
        self.backend = backend.backend_for(self.device)
        self.precision = amp.current()  # the policy at capture time holds for every call
        self.example = _check_example(model, example_batch)
        self.graphs: dict[tuple, _CudaGraph] = {}
        self.logits = None
        self.reason = self._static_reason()
        if self.reason is not None:
            self._warn(stacklevel=4)  # the caller of capture()

    @property
    def captured(self) -> bool:
        return self.reason is None and bool(self.graphs)

    def _static_reason(self) -> str | None:
        from engine.train import model_rngs  # engine.train imports this module

        blocker = backend.capture_blocker(self.backend)
        if blocker is not None:
            return f"capture: {blocker}"
        if self.scaler is not None:
            return "capture: fp16 loss scaling decides on the host whether to skip a step"
        if model_rngs(self.model):
            return "capture: Dropout draws its masks on the host"
        return None

    def _warn(self, stacklevel: int = 3) -> None:  # 3: the caller of step(x, t)
        warnings.warn(
            f"{self.reason}; the step runs eagerly", CaptureWarning, stacklevel=stacklevel
        )

    def __call__(self, x, t):
        x, t = self._check_batch(x, t)
        with amp.autocast(self.precision):
            if self.reason is not None:
                return self._eager(x, t)
            key = (x.shape, t.shape)
            graph = self.graphs.get(key)
            if graph is not None:
                loss, self.logits = graph.replay(x, t)
                return loss
            if len(self.graphs) >= MAX_SHAPES:
                raise ArgumentError(
                    f"Step: batch shape {x.shape} would be graph {MAX_SHAPES + 1}; a captured "
                    f"step keeps at most {MAX_SHAPES} (shapes so far: {list(self.graphs)})"
                )
            loss = self._eager(x, t)  # the warm-up: a real step that compiles and allocates
            try:
                self.graphs[key] = _CudaGraph(self, x, t)
            except Exception as exc:  # noqa: BLE001  any failure to record means: stay eager
                op = _innermost_op(exc)
                where = f" in {op}" if op else ""
                self.reason = f"capture: {type(exc).__name__}{where} ({exc})"
                self.graphs.clear()
                self._warn()
            return loss

    def _eager(self, x, t):
        loss, self.logits = eager_step(self.model, self.loss_fn, self.optimizer, x, t, self.scaler)
        return loss

    def _check_batch(self, x, t):
        """x and t on the model's device; ArgumentError unless they match the example's shapes
        and dtypes beyond the batch axis and hold the same number of samples."""
        (x_shape, x_dtype), (t_shape, t_dtype) = self.example
        if (
            tuple(x.shape[1:]) != x_shape[1:]
            or tuple(t.shape[1:]) != t_shape[1:]
            or len(x) != len(t)
            or len(x) == 0
        ):
            raise ArgumentError(
                f"Step: batch x {tuple(x.shape)}, t {tuple(t.shape)} does not match the example "
                f"batch x {x_shape}, t {t_shape} (only the batch size may change, same for both)"
            )
        if x.dtype != x_dtype or t.dtype.kind != t_dtype.kind:
            raise ArgumentError(
                f"Step: batch dtypes x {x.dtype}, t {t.dtype} differ from the example's "
                f"x {x_dtype}, t {t_dtype}"
            )
        return backend.to_device(x, self.device), backend.to_device(t, self.device)


def _check_example(model, example_batch):
    """((x shape, x dtype), (t shape, t dtype)) of example_batch = (x, t), after checking it fits
    the model: one no-grad forward, whose errors (a channel count, a too small image) are the
    ops' own ArgumentErrors. ArgumentError naming example_batch for anything else."""
    if not isinstance(example_batch, (tuple, list)) or len(example_batch) != 2:
        raise ArgumentError("example_batch must be a pair (x, t) of one batch's inputs and targets")
    x, t = example_batch
    if not hasattr(x, "shape") or not hasattr(t, "shape"):
        raise ArgumentError(
            f"example_batch: x and t must be arrays, got {type(x).__name__}, {type(t).__name__}"
        )
    params = model.parameters()
    dtype = params[0].dtype if params else np.float32
    if x.ndim < 2 or x.dtype != dtype:
        raise ArgumentError(
            f"example_batch: x must be ({len(x) if x.ndim else 'n'}, ...) {dtype} like the "
            f"model's parameters, got {x.dtype} {tuple(x.shape)}"
        )
    if t.dtype.kind not in "iu" or len(t) != len(x) or len(x) == 0:
        raise ArgumentError(
            f"example_batch: t must hold integer targets for the {len(x)} samples of x "
            f"{tuple(x.shape)}, got {t.dtype} {tuple(t.shape)}"
        )
    was_training = model.training
    model.eval()  # no running statistics change: only the shapes are tried
    try:
        with no_grad():
            model(Tensor(backend.to_device(x[:1], _device_of(model))))
    finally:
        model.train(was_training)
    return (tuple(x.shape), x.dtype), (tuple(t.shape), t.dtype)


def capture(model, loss_fn: Callable, optimizer, example_batch, *, scaler=None) -> Step:
    """A Step training `model` with `loss_fn(logits, t) -> 0-d Tensor` and `optimizer`, captured
    as a CUDA graph where possible (see the module docstring), eager with one CaptureWarning
    where not. example_batch = (x, t) fixes the shapes and dtypes beyond the batch axis; it is
    only tried (one no-grad forward of one sample), never trained on. scaler: an amp.LossScaler
    for fp16 (eager). The precision policy in force here (amp.autocast) holds for every call."""
    return Step(model, loss_fn, optimizer, example_batch, scaler)


class _CudaGraph:
    """One recorded step for one batch shape: static inputs, the graph, its memory pool and the
    arrays it writes (loss, logits), all kept alive together."""

    def __init__(self, step: Step, x, t):
        cp = step.backend.xp
        opt, params = step.optimizer, step.optimizer.params
        self.x, self.t = cp.array(x, copy=True), cp.array(t, copy=True)  # the static inputs
        dtype = params[0].dtype
        self.lr, self.count = cp.zeros((), dtype), cp.zeros((), dtype)
        self.pool = cp.cuda.MemoryPool()  # the graph's own: its addresses never go to anyone else
        self.stream = cp.cuda.Stream(non_blocking=True)
        steps, grads = opt.steps, [p.grad for p in params]
        cp.cuda.get_current_stream().synchronize()  # the warm-up step has finished
        try:
            with cp.cuda.using_allocator(self.pool.malloc), self.stream:
                self.stream.begin_capture()
                try:
                    with opt.device_hyper(self.count, self.lr):
                        self.loss, self.logits = eager_step(
                            step.model, step.loss_fn, opt, self.x, self.t
                        )
                finally:
                    graph = _end_capture(self.stream)
        finally:  # recording ran no kernel: the host-side state goes back to after the warm-up
            opt.steps = steps
        if graph is None:
            raise RuntimeError("the stream capture was invalidated")
        self.graph = graph
        self.grads = [p.grad for p in params]  # what the graph writes; restore the warm-up's
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.optimizer = opt

    def replay(self, x, t):
        """Copy the batch in, refill lr and the step number, launch; (loss copy, logits)."""
        opt = self.optimizer
        _copy_into(self.x, x)
        _copy_into(self.t, t)
        self.lr.fill(opt.lr)
        self.count.fill(opt.steps + 1)
        self.graph.launch()
        opt.steps += 1
        for p, g in zip(opt.params, self.grads, strict=True):
            p.grad = g  # the gradients this replay wrote, as an eager step leaves them
        return self.loss.copy(), self.logits


def _end_capture(stream):
    """The recorded graph, or None when the capture was invalidated (the error is raised above)."""
    try:
        return stream.end_capture()
    except Exception:  # noqa: BLE001  an invalidated capture: the first error is the one to report
        return None


def _copy_into(dst, src) -> None:
    """dst[...] = src for a CuPy dst, src NumPy (host-to-device copy) or CuPy."""
    if backend.device_of(src) == "cpu":
        dst.set(np.ascontiguousarray(src, dtype=dst.dtype))
    else:
        dst[...] = src
