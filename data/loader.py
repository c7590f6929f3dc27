"""Batches for training and evaluation on MegEngine's ``DataLoader``.

Determinism: the sampler draws the epoch's order from ``(seed, epoch)`` and gives every sample
its own augmentation seed, so batch *k* of epoch *e* is the same whatever the number of worker
processes and after a resume. Sharding for data-parallel training is MegEngine's
``MapSampler.scatter``: rank *r* of *W* takes every W-th index of the (padded) epoch order.

Quiet workers: MegEngine forks its worker processes when a loader is iterated, and at every
fork its CUDA probe prints a banner and "failed to load cuda func" lines (on a machine without
CUDA), the forked workers print numpy's subnormal notes and Plasma deprecation warnings, and on
Ctrl-C each worker prints a KeyboardInterrupt traceback. Workers report everything through
MegEngine's result queue (an exception in a worker is re-raised in the main process), so while
``Loader`` starts its workers, stderr is pointed at /dev/null across the fork and the workers
keep it that way and ignore SIGINT (the main process handles Ctrl-C and stops them).

Workers never outlive the run: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``, through ``common.lifeline``), so a training run killed with SIGKILL
takes its workers with it, and the main process waits at most ``WORKER_TIMEOUT_S`` for a batch
(MegEngine's ``DataLoader(timeout=...)``): a worker that died or hangs is one ``DataError``
line, not a run that waits forever. The workers hand their batches over through a pyarrow
plasma store that MegEngine starts with a bare ``Popen`` (``megengine/data/tools/_queue.py``):
it outlived a run killed by SIGKILL, holding its shared memory. ``Loader`` starts that store
itself, through ``common.children`` (a deadline, death with this process, its socket removed),
and hands it to MegEngine in place of MegEngine's own (``SupervisedPlasmaStore``).
"""
import contextlib
import os
import signal
import subprocess
import warnings

import numpy as np
from PIL import Image

from megengine.data import DataLoader
from megengine.data.dataset import Dataset
from megengine.data.sampler import MapSampler

from common.children import Child
from common.cpus import cpu_count
from common.lifeline import set_parent_death_signal

from .images import UnreadableImage
from .sources import DataError

NOTHING_READABLE = -2  # the ``skipped`` value of a sample drawn from a source with no readable image
WORKER_TIMEOUT_S = 600  # for one batch from the workers; decoding a batch takes seconds at most
# The plasma store lives as long as its loader or this process, whichever ends first; the
# deadline is only the backstop every child has.
PLASMA_STORE_DEADLINE_S = 30 * 24 * 3600


_QUIET = {"on": False, "saved": None, "parent": None}


def _before_fork():
    if _QUIET["on"]:
        _QUIET["parent"] = os.getpid()
        # Ctrl-C waits until stderr is back (a KeyboardInterrupt inside an at-fork hook would
        # be swallowed, leaving stderr on /dev/null)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        _QUIET["saved"] = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)


def _after_fork_in_parent():
    if _QUIET["saved"] is not None:
        os.dup2(_QUIET["saved"], 2)
        os.close(_QUIET["saved"])
        _QUIET["saved"] = None
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _after_fork_in_child():
    if _QUIET["saved"] is not None:  # a loader worker: stderr stays /dev/null
        set_parent_death_signal(signal.SIGKILL)
        if os.getppid() != _QUIET["parent"]:  # the parent died before the line above
            os._exit(1)
        os.close(_QUIET["saved"])
        _QUIET["saved"] = None
        _QUIET["on"] = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


@contextlib.contextmanager
def quiet_forks():
    """Processes forked inside this block start with stderr on /dev/null and ignore SIGINT."""
    _QUIET["on"] = True
    try:
        yield
    finally:
        _QUIET["on"] = False


class SupervisedPlasmaStore:
    """MegEngine's ``_PlasmaStoreManager`` (same attributes: ``socket_name``, ``refcount``,
    ``plasma_store``) with the store started under the lifeline. MegEngine counts the queues
    that use it and drops it at zero, which stops the store (``__del__``)."""

    def __init__(self):
        import pyarrow

        self.owner = os.getpid()  # forked workers inherit this object; only the owner stops it
        self.socket_name = "/tmp/mge_plasma_%s" % os.urandom(8).hex()
        memory = int(os.environ.get("MGE_PLASMA_MEMORY", 4 << 30))  # MegEngine's default, 4 GB
        server = os.path.join(pyarrow.__path__[0], "plasma-store-server")
        self.store = Child([server, "-s", self.socket_name, "-m", str(memory)],
                           PLASMA_STORE_DEADLINE_S, what="the data loader's plasma store",
                           scratch=[self.socket_name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
        self.plasma_store = self.store.proc
        self.refcount = 0  # the queue that MegEngine creates next counts itself

    def __del__(self):
        if os.getpid() == self.owner:
            self.store.stop()


def supervise_plasma_store():
    """Install a ``SupervisedPlasmaStore`` where MegEngine would start its own (the next
    ``PlasmaShmQueue``, made when a loader with workers is iterated), unless one is running."""
    from megengine.data.tools import _queue

    if _queue.MGE_PLASMA_STORE_MANAGER is None:
        _queue.MGE_PLASMA_STORE_MANAGER = SupervisedPlasmaStore()


class Loader:
    """A ``DataLoader`` whose worker processes start quietly and whose plasma store is
    supervised (see the module docstring)."""

    def __init__(self, loader):
        self.loader = loader
        if loader.num_workers:
            warnings.filterwarnings("ignore", message="Plasma is deprecated",
                                    category=DeprecationWarning)

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        if self.loader.num_workers:
            supervise_plasma_store()
        with quiet_forks():
            return iter(self.loader)


class EpochSampler(MapSampler):
    """Yields batches of ``(index, augmentation_seed)``; call ``set_epoch`` before each epoch.

    shuffle=False gives the natural order (evaluation); augmentation seeds are still per sample.
    """

    def __init__(self, dataset, batch_size, shuffle, seed=0, drop_last=False, world_size=1,
                 rank=0):
        super().__init__(dataset, batch_size=batch_size, drop_last=drop_last,
                         world_size=world_size, rank=rank, seed=seed)
        self.shuffle = shuffle
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def sample(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.dataset)
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        aug_seeds = rng.integers(0, 2 ** 63 - 1, size=n)
        return [(int(i), int(aug_seeds[i])) for i in order]


class TransformedDataset(Dataset):
    """``source`` samples through ``transform``; item ``(index, seed)`` -> ``(image CHW float32,
    label int32, skipped)`` where ``skipped`` is the index of an unreadable sample that was
    replaced by the next readable one (-1 if none). Training counts the replacement as a sample;
    evaluation (``common.evaluation``) leaves rows with ``skipped >= 0`` out, so every readable
    image is counted exactly once."""

    def __init__(self, source, transform):
        super().__init__()
        self.source = source
        self.transform = transform

    def __len__(self):
        return len(self.source)

    def __getitem__(self, item):
        index, seed = item
        skipped = -1
        for attempt in range(len(self.source)):
            i = (index + attempt) % len(self.source)
            try:
                image = self.source.load(i)
                break
            except UnreadableImage:
                if skipped < 0:
                    skipped = i
        else:
            # Raising here would reach the user wrapped in a worker's traceback; a blank image
            # marked NOTHING_READABLE lets CheckedLoader raise the DataError in the main process.
            i, image, skipped = index, Image.new("RGB", (1, 1)), NOTHING_READABLE
        x = self.transform(image, np.random.default_rng(seed))
        return x.astype(np.float32), np.int32(self.source.labels[i]), np.int32(skipped)


class CheckedLoader:
    """A ``DataLoader`` that stops with one ``DataError`` line when no image of the source
    can be read (whether the loading ran in this process or in worker processes)."""

    def __init__(self, loader, source):
        self.loader, self.source = loader, source

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except RuntimeError as e:
                if "dataloader timeout" not in str(e):
                    raise
                raise DataError("the data loader workers gave no batch within %d s (a worker "
                                "died or hangs); try --workers 0" % WORKER_TIMEOUT_S) from None
            if (np.asarray(batch[2]) == NOTHING_READABLE).any():
                raise DataError("no readable image in %s (all %d files failed to decode)"
                                % (self.source.name, len(self.source)))
            yield batch


def default_workers(source, gpu=False, cpus=None):
    """Loader workers when ``--workers`` is not given, for ``source`` on a run that may use
    ``cpus`` CPUs (``common.cpus.cpu_count``: the affinity mask), training on a GPU or not.

    Data in memory (digits, CIFAR): 0; a worker would only copy arrays, after a fork. Image
    files: on a GPU the CPUs are free to decode, so ``cpus - 1`` workers (at most 8). On the
    CPU device MegEngine's compute already runs a thread on every usable CPU, so a worker only
    takes time from it and costs a fork per loader per epoch: measured on 2 CPUs (a 64 px
    image folder, docs/training.md), 0 workers was the fastest, so up to 4 CPUs it is 0;
    beyond, a quarter of the CPUs decode (at most 8; not measured here)."""
    cpus = cpu_count() if cpus is None else cpus
    if not getattr(source, "decodes_files", False):
        return 0
    if gpu:
        return max(0, min(8, cpus - 1))
    return 0 if cpus <= 4 else min(8, cpus // 4)


def make_loader(source, transform, batch_size, shuffle, seed=0, workers=0, world_size=1,
                rank=0, drop_last=False):
    """``(DataLoader, sampler)``; the loader yields (images, labels, skipped) numpy batches."""
    per_rank = -(-len(source) // world_size)
    if per_rank < batch_size:
        if drop_last:
            raise DataError("%s has %d images: fewer than one batch of %d per process"
                            % (source.name, len(source), batch_size))
        batch_size = per_rank
    dataset = TransformedDataset(source, transform)
    sampler = EpochSampler(dataset, batch_size, shuffle, seed=seed, drop_last=drop_last,
                           world_size=world_size, rank=rank)
    loader = DataLoader(dataset, sampler=sampler, num_workers=workers,
                        timeout=WORKER_TIMEOUT_S if workers else 0)
    return CheckedLoader(Loader(loader), source), sampler
