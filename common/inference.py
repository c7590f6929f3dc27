"""Deployment inference: the settings that export, infer and the deploy benchmark share.

One place for
- the standard ImageNet preprocessing (resize the shorter side to 256/224 of the input size,
  centre crop, per-channel mean/std),
- the graph optimizations a dumped model is written with: named option sets for
  ``megengine.jit.trace.dump``, each measured on its own by ``tools/bench_deploy.py``, and the
  one the exporter uses by default,
- the runtime settings (threads, fast-run) and loading a ``.mge`` file with MegEngine Lite, which
  runs the dumped graph without any Python model code,
- tracing and dumping a model.

This module never imports ``model``: ``tools/infer.py`` relies on that.
"""
import contextlib
import logging
import os

import numpy as np

from .device import cpu_count
from .errors import UserError

log = logging.getLogger(__name__)

INPUT_NAME = "data"
OUTPUT_NAME = "logits"

# ImageNet statistics on the 0..255 scale (torchvision's 0..1 values times 255).
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
RESIZE_RATIO = 256 / 224  # resize 256 -> centre crop 224, at any input size

# Keyword arguments of ``trace.dump`` (``optimize_for_inference`` is on unless "none"), by name.
# "default" is MegEngine's inference pass list alone (BN/const folding, elemwise fusion, ...);
# the others add one option each, so the benchmark shows what each one changes.
DUMP_OPTIONS = {
    "none": {"optimize_for_inference": False},
    "default": {},
    "fuse": {"enable_fuse_conv_bias_nonlinearity": True},
    "nchw88": {"enable_nchw88": True},
    "nchw88+fuse": {"enable_nchw88": True, "enable_fuse_conv_bias_nonlinearity": True},
}
# NCHW88 (channels in blocks of 8, the AVX2 register width) is what makes MegEngine's x86 conv
# kernels fast; fusing conv + bias + ReLU into one operator saves a pass over every activation.
# See the README's table ("Deployment and inference speed").
BEST_DUMP_OPTIONS = "nchw88+fuse"


class ModelFileError(UserError):
    """A .mge file that cannot be loaded."""


def default_threads():
    """All cores this process may use."""
    return cpu_count()


def trace_device(threads=None):
    """The device to build and trace a model on before dumping it.

    MegEngine's multi-threaded CPU device. On the plain single-threaded CPU device ("cpux")
    ``trace.dump`` fails (it places the graph input on "xpux" and the captured weights on
    "cpux"); the dumped file does not record the thread count, Lite chooses it at load time.
    """
    return "multithread%d:0" % (threads or default_threads())


def dump_options(name):
    try:
        return dict(DUMP_OPTIONS[name])
    except KeyError:
        raise UserError("unknown dump options %r; known: %s"
                        % (name, ", ".join(DUMP_OPTIONS))) from None


def dump_model(forward, example_input, file, options=BEST_DUMP_OPTIONS):
    """Trace ``forward`` (a deploy-form model in eval mode, or any function of one image batch)
    on ``example_input`` and write the graph to ``file`` (a path or a binary file object).

    The batch size and resolution of ``example_input`` become the dumped input shape (Lite
    accepts other batch sizes at run time). Returns the traced function's output on
    ``example_input`` as numpy.
    """
    import megengine as mge
    from megengine.jit import trace

    @trace(symbolic=True, capture_as_const=True)
    def graph(data):
        return forward(data)

    out = graph(mge.tensor(np.asarray(example_input, np.float32))).numpy()
    kwargs = dump_options(options) if isinstance(options, str) else dict(options)
    optimize = kwargs.pop("optimize_for_inference", True)
    graph.dump(file, arg_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
               optimize_for_inference=optimize, **kwargs)
    return out


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
    global_layout  let Lite choose every operator's layout by profiling (its global layout
              transform) instead of the layout the file was dumped with
    """

    def __init__(self, path, threads=None, fastrun=False, weight_preprocess=False,
                 record=False, global_layout=False):
        from megenginelite import (LiteAlgoSelectStrategy, LiteConfig, LiteNetwork,
                                   LiteOptions)

        if not os.path.isfile(path):
            raise ModelFileError("model file not found: %s" % path)
        options = LiteOptions()
        options.weight_preprocess = bool(weight_preprocess)
        options.comp_node_seq_record_level = 1 if record else 0
        options.const_shape = bool(record)  # recording needs static shapes
        self.network = LiteNetwork(LiteConfig(option=options))
        self.threads = threads or default_threads()
        if self.threads > 1:
            self.network.threads_number = self.threads
        if fastrun:
            self.network.set_network_algo_policy(LiteAlgoSelectStrategy.LITE_ALGO_PROFILE
                                                 | LiteAlgoSelectStrategy.LITE_ALGO_REPRODUCIBLE)
        if global_layout:
            self.network.enable_global_layout_transform()
        try:
            with _quiet_lite_errors():
                self.network.load(path)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelFileError("%s is not a loadable MegEngine model (%s)" % (path, first)) \
                from None
        names = self.network.get_all_input_name()
        if len(names) != 1:
            raise ModelFileError("%s has %d inputs (%s); expected one image batch"
                                 % (path, len(names), ", ".join(names)))
        self._input = self.network.get_io_tensor(names[0])
        self._output = self.network.get_io_tensor(self.network.get_output_name(0))
        layout = self._input.layout
        self.input_shape = tuple(int(s) for s in layout.shapes[:layout.ndim])
        if len(self.input_shape) != 4:
            raise ModelFileError("%s takes input of shape %s; expected (N, 3, H, W)"
                                 % (path, self.input_shape))
        out_layout = self._output.layout
        self.num_classes = int(out_layout.shapes[out_layout.ndim - 1])

    def __call__(self, batch):
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if batch.ndim != 4 or batch.shape[1:] != self.input_shape[1:]:
            raise ValueError("input of shape %s does not fit the model's (N, %d, %d, %d)"
                             % ((batch.shape,) + self.input_shape[1:]))
        self._input.set_data_by_copy(batch)
        self.network.forward()
        self.network.wait()
        return self._output.to_numpy().copy()


def preprocess_image(image, size=224):
    """A PIL image or a path -> float32 ``(3, size, size)``: RGB, shorter side resized to
    ``round(size * 256 / 224)`` (bilinear), centre crop, ImageNet mean/std."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        try:
            with Image.open(image) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as e:
            raise UserError("cannot read image %s (%s)" % (image, e)) from None
    image = image.convert("RGB")
    short = round(size * RESIZE_RATIO)
    w, h = image.size
    scale = short / min(w, h)
    image = image.resize((max(size, round(w * scale)), max(size, round(h * scale))),
                         Image.BILINEAR)
    w, h = image.size
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    x = (np.asarray(image, np.float32) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits):
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def top_k(logits, k=5):
    """Per row: ``[(class index, probability), ...]``, most probable first."""
    probs = softmax(np.asarray(logits, np.float64))
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
    return [[(int(i), float(p[i])) for i in row] for row, p in zip(order, probs)]
