"""Running a dumped ``.mge`` graph with MegEngine Lite, without any Python model code.

This module never imports ``model``: ``tools/infer.py`` relies on that.
"""
import base64
import contextlib
import io
import logging
import os

import numpy as np

from common import cpus
from common.cpus import cpu_count
from errors import ModelFileError

from .dump import LAYOUTS, PORTABLE_LAYOUT
from .modelfile import METADATA_FORMAT


@contextlib.contextmanager
def _quiet_lite_errors():
    # megenginelite logs every error (with a C++ backtrace) to the root logger before raising
    # it; the caller reports it as one line instead.
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(previous)


class DumpedModel:
    """A ``.mge`` file run by MegEngine Lite: ``model(batch) -> logits`` on numpy arrays.

    threads   CPU threads (default: all cores)
    fastrun   profile every operator's algorithms on the first run and keep the fastest
              (MegEngine's "fast-run"); the first call is then slow
    weight_preprocess  transform the weights once at load time for the chosen algorithms
    record    record the kernel sequence on the first run and replay it afterwards (less
              dispatch overhead; the input shape must stay the same)
    layout    the tensor layout Lite converts the graph to at load time (``dump.LAYOUTS``:
              "nchw" as dumped, "nchw88" for x86 AVX2 kernels; see ``deploy/dump.py``)
    global_layout  let Lite choose every operator's layout by profiling (its global layout
              transform) instead of the layout the file was dumped with
    algo_cache  a fast-run algorithm cache file (``deploy.algo_profile``): fast-run then looks the
              choices up instead of profiling (implies ``fastrun``). MegEngine keeps one cache
              per process (``LiteGlobal.set_persistent_cache``): the last one set wins.
    data      the file's bytes, already read (``deploy.runtime.open_mge`` loads exactly the
              bytes its child process checked); None: read ``path``
    """

    def __init__(self, path, threads=None, fastrun=False, weight_preprocess=False,
                 record=False, global_layout=False, algo_cache=None, layout=PORTABLE_LAYOUT,
                 data=None):
        from megenginelite import (LiteAlgoSelectStrategy, LiteConfig, LiteGlobal, LiteNetwork,
                                   LiteOptions)

        if not os.path.isfile(path):
            raise ModelFileError("model file not found: %s" % path)
        if algo_cache is not None:
            LiteGlobal.set_persistent_cache(os.fspath(algo_cache))
            fastrun = True
        options = LiteOptions()
        options.weight_preprocess = bool(weight_preprocess)
        options.comp_node_seq_record_level = 1 if record else 0
        options.const_shape = bool(record)  # recording needs static shapes
        if layout not in LAYOUTS:
            raise ValueError("unknown layout %r; known: %s" % (layout, ", ".join(LAYOUTS)))
        if LAYOUTS[layout]:
            setattr(options, LAYOUTS[layout], 1)
        self.path = path
        self.network = LiteNetwork(LiteConfig(option=options))
        self.threads = threads or cpu_count()
        if self.threads > 1:
            self.network.threads_number = self.threads
        self.fastrun = bool(fastrun)  # each new input shape is profiled on its first call
        if fastrun:
            self.network.set_network_algo_policy(LiteAlgoSelectStrategy.LITE_ALGO_PROFILE
                                                 | LiteAlgoSelectStrategy.LITE_ALGO_REPRODUCIBLE)
        if global_layout:
            self.network.enable_global_layout_transform()
        try:
            with _quiet_lite_errors():
                # Lite takes a path or a BufferedReader; it reads either into memory
                self.network.load(path if data is None
                                  else io.BufferedReader(io.BytesIO(data)))
        except RuntimeError as e:
            raise not_loadable(path, e) from None
        names = self.network.get_all_input_name()
        if len(names) != 1:
            raise ModelFileError("%s has %d inputs (%s); expected one image batch"
                                 % (path, len(names), ", ".join(names)))
        self._input = self.network.get_io_tensor(names[0])
        self._output = self.network.get_io_tensor(self.network.get_output_name(0))
        self._outputs = [self.network.get_io_tensor(name)
                         for name in self.network.get_all_output_name()]
        layout = self._input.layout
        self.input_shape = tuple(int(s) for s in layout.shapes[:layout.ndim])
        if len(self.input_shape) != 4:
            raise ModelFileError("%s takes input of shape %s; expected (N, 3, H, W)"
                                 % (path, self.input_shape))
        out_layout = self._output.layout
        self.num_classes = int(out_layout.shapes[out_layout.ndim - 1])

    # set by deploy.runtime.open_mge: the budgets (common.limits) and what one image costs
    # (weights, activations, macs); every batch is checked against them before it runs
    limits = None
    budget = None

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape[1:]:
            raise ValueError("input of shape %s does not fit the model's (N, %d, %d, %d)"
                             % ((batch.shape,) + self.input_shape[1:]))
        if self.limits is not None:
            self.limits.check(self.path, batch=batch.shape[0], **self.budget)
        self._input.set_data_by_copy(batch)
        self.network.forward()
        self.network.wait()
        return self._output.to_numpy().copy()

    def run_all(self, batch):
        """Every output of the graph, in order, as numpy arrays (a features model has one per
        stage; ``__call__`` returns the first)."""
        self(batch)
        return [t.to_numpy().copy() for t in self._outputs]


def not_loadable(path, error):
    """The one-line ``ModelFileError`` for a ``.mge`` that MegEngine refused with ``error``."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return ModelFileError("%s is not a loadable MegEngine model (%s)" % (path, first[:200]))


def read_user_info(path):
    """The ``user_info`` string a ``.mge`` was dumped with (``trace.dump(user_info=...)``), or
    None. Parses the graph with MegEngine's native loader: only for files this toolkit has just
    written, or in a child process (``deploy/lite_child.py``): a crafted file can crash it."""
    from megengine.core.tensor.megbrain_graph import load_graph

    try:
        with _quiet_lite_errors(), open(path, "rb") as f:
            raw = load_graph(f).metadata
    except (OSError, RuntimeError) as e:
        raise not_loadable(path, e) from None
    return user_info_of(raw, path)


def user_info_of(raw, path):
    """The ``user_info`` string in a loaded graph's metadata (``SerializationMetadata``), or
    None. MegEngine pickles it; it is unpickled with the allow-list unpickler (a model file is
    untrusted), so only plain data loads."""
    from common.safe_pickle import safe_load

    if raw is None or not raw.is_valid or not raw.user_info:
        return None
    try:
        info = safe_load(io.BytesIO(raw.user_info))
    except Exception as e:  # any unpickling failure: refused globals, truncated data
        raise ModelFileError("%s carries metadata that is not plain data (%s)"
                             % (path, str(e).splitlines()[0] if str(e) else type(e).__name__)) \
            from None
    return info if isinstance(info, str) else None


def tuned_for_this_cpu(metadata):
    """Whether a ``.mge``'s algorithm cache and layout were profiled on this CPU."""
    return metadata.get("cpu_fingerprint") == cpus.cpu_fingerprint()


def load_plan(path, metadata):
    """How a ``.mge`` with ``metadata`` (decoded; ``algo_cache`` still in it) is loaded on this
    CPU: ``(algorithm cache bytes or None, layout, notes)``. The tuning is used only where this
    is the CPU it was profiled on, and never for a file written before the graph was portable.
    ``deploy/lite_child.py``'s inspect child follows the same plan."""
    cache = metadata.get("algo_cache")
    layout = metadata.get("layout", PORTABLE_LAYOUT)
    notes = []
    if metadata.get("format") != METADATA_FORMAT:
        if cache:
            notes.append("%s was written by an earlier version; its algorithm cache is not "
                         "used (export it again for full speed)" % path)
        return None, PORTABLE_LAYOUT, notes
    if (cache or layout != PORTABLE_LAYOUT) and not tuned_for_this_cpu(metadata):
        notes.append("%s was tuned on another CPU (%s); this one is %s: running its portable "
                     "graph untuned (slower; export it on this machine for full speed)"
                     % (path, metadata.get("cpu", "unknown"), cpus.cpu_name()))
        return None, PORTABLE_LAYOUT, notes
    if layout not in LAYOUTS:
        raise ModelFileError("%s records an unknown layout %.40r" % (path, layout))
    if cache is None:
        return None, layout, notes
    try:
        return base64.b64decode(cache, validate=True), layout, notes
    except (TypeError, ValueError):
        raise ModelFileError("%s records an algorithm cache that is not base64 text" % path) \
            from None
