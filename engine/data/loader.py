"""Mini-batches from a Dataset, assembled (and augmented) on a background thread.

Order and augmentation are pure functions of (seed, epoch, batch index), so a run is the same
whatever the thread timing. The thread is bounded (`prefetch` batches ahead), stops when the
consumer stops, and hands its exceptions to the consumer.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import numpy as np

from engine.errors import DataError

_DONE = object()  # end-of-epoch marker in the queue


class DataLoader:
    """Iterate (x float32 (b, c, h, w), y int64 (b,)) NumPy batches over `dataset`.

    dataset: anything with .images (n, c, h, w) and .labels (n,) (a Dataset, possibly
    memory-mapped), or a tuple (images, labels). indices: the samples to use (e.g. a split's
    train_idx), default all. Each `iter()` is one epoch: the order is a permutation drawn from
    default_rng([seed, epoch]) (shuffle=False keeps `indices` order); augment(batch, rng) gets
    default_rng([seed, epoch, batch_index, 1]). The epoch counter advances after each complete
    pass, or is set by set_epoch(e). prefetch: batches prepared ahead on a background thread
    (0: none, everything on the caller's thread). drop_last drops a final short batch.
    """

    def __init__(
        self,
        dataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        indices=None,
        augment: Callable | None = None,
        prefetch: int = 2,
        drop_last: bool = False,
    ):
        if isinstance(dataset, tuple):
            self.images, self.labels = dataset
        else:
            self.images, self.labels = dataset.images, dataset.labels
        n = len(self.labels)
        if len(self.images) != n or getattr(self.images, "ndim", 0) != 4:
            raise DataError(
                f"need images (n, c, h, w) and labels (n,), got {np.shape(self.images)} "
                f"and {np.shape(self.labels)}"
            )
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if int(prefetch) < 0:
            raise ValueError(f"prefetch must be >= 0, got {prefetch}")
        self.indices = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.ndim != 1 or (
            len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= n)
        ):
            raise DataError(f"indices must be 1-D in [0, {n}), got shape {self.indices.shape}")
        self.batch_size, self.shuffle, self.seed = int(batch_size), shuffle, seed
        self.augment, self.prefetch, self.drop_last = augment, int(prefetch), drop_last
        self.epoch = 0

    def __len__(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(len(self.indices), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return self.indices
        return self.indices[
            np.random.default_rng([self.seed, epoch]).permutation(len(self.indices))
        ]

    def _batch(self, epoch: int, b: int, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Read in ascending index order (sequential for a memmap), then restore the batch order.
        sort = np.argsort(idx, kind="stable")
        x = np.empty((len(idx), *self.images.shape[1:]), dtype=np.float32)
        x[sort] = self.images[idx[sort]]
        y = np.asarray(self.labels[idx], dtype=np.int64)
        if self.augment is not None:
            x = self.augment(x, np.random.default_rng([self.seed, epoch, b, 1]))
        return x, y

    def _batches(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        order = self._order(epoch)
        for b in range(len(self)):
            yield self._batch(epoch, b, order[b * self.batch_size : (b + 1) * self.batch_size])

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        epoch = self.epoch
        source = (
            self._batches(epoch)
            if self.prefetch == 0
            else _Prefetch(self._batches(epoch), self.prefetch)
        )
        completed = False
        try:
            yield from source
            completed = True
        finally:
            if isinstance(source, _Prefetch):
                source.close()
            if completed:
                self.epoch = epoch + 1


class _Prefetch:
    """Run a batch generator on a daemon thread, at most `depth` batches ahead.

    The producer puts ("ok", batch), ("error", exception) or _DONE; it checks a stop event
    between batches and while waiting for room, so close() ends it promptly (no hang).
    """

    def __init__(self, batches: Iterator, depth: int):
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(
            target=self._run, args=(batches,), daemon=True, name="medgrad-prefetch"
        )
        self.thread.start()

    def _put(self, item) -> bool:
        while not self.stop.is_set():
            try:
                self.queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, batches: Iterator) -> None:
        try:
            for batch in batches:
                if not self._put(("ok", batch)):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, who re-raises it
            self._put(("error", exc))

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _DONE:
                return
            kind, value = item
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self.stop.set()
        while True:  # drain so a producer blocked on put() sees the stop event
            try:
                self.queue.get_nowait()
            except queue.Empty:
                break
        self.thread.join(timeout=5.0)
