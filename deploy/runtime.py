"""Opening an exported model for inference, whichever format: ``.mge`` (MegEngine Lite),
``.onnx`` (ONNX Runtime or OpenVINO, whichever runs its precision faster on this CPU:
``deploy/route.py``) or ``.bnn`` (a packed binary network, ``deploy/binary_runtime.py``), with
the metadata ``tools/export.py`` recorded in it. An int8 QDQ ``.onnx`` (tools/quantize.py) is
int8 as it is; ``precision="bf16"`` runs a float one in bfloat16 (OpenVINO).

``open_model(path, threads, precision, limits)`` returns an object with ``model(batch) ->
logits`` (numpy), ``input_shape`` (the exported ``(N, 3, H, W)``), ``num_classes`` and
``metadata`` (a dict: ``preprocess`` (a ``PreprocessSpec`` dict), ``classes``, ``arch``, ...;
``{}`` for files written elsewhere) and ``notes`` (one-line remarks for the user, e.g. that a tuned file runs untuned
on this CPU).

A ``.mge`` is portable (``deploy/dump.py``); what is tuned to the CPU that exported it, the
fast-run algorithm cache (``algo_cache``) and a load-time layout such as NCHW88, is recorded
with that CPU's fingerprint (``common.cpus.cpu_fingerprint``) and used only on the same CPU.
On another CPU the file runs its portable graph with MegEngine's heuristic algorithm choice
(slower; said in a note). A ``.mge`` whose graph is not known to be portable (written by an
earlier version, whose default dumped NCHW88 into the graph, or by another program) is first
run once in a child process under a deadline (``deploy/lite_child.py``): a file that cannot
run on this CPU is one ``ModelFileError`` line, never a hang. Never imports ``model``.

Every ``.mge`` is untrusted: this process parses none of its bytes before a child has loaded and
run it (``lite_child.inspect``: a crash there is one line naming the signal) and its declared
budgets passed ``limits`` (``common.limits``; docs/deployment.md, "Untrusted files").
"""
import contextlib
import hashlib
import logging
import os
import tempfile

from common import cpus
from common.cpus import cpu_count
from common.limits import Limits
from errors import ModelFileError

from . import lite, lite_child, onnx_check, route
from .dump import PORTABLE_LAYOUT
from .lite import load_plan, tuned_for_this_cpu  # noqa: F401  (lite_child shares the plan)
from .modelfile import METADATA_FORMAT, checked_batch, decode_metadata
from .preprocess import PreprocessSpec, imagenet_spec

log = logging.getLogger(__name__)

# running a .mge of unknown portability once in a child: start-up + loading and one pass,
# which grow with the weights (A0: 33 MB, B3: 490 MB)
PROBE_DEADLINE_S = (30.0, 0.1)  # seconds, seconds per MB of file


def spec_of(model):
    """``(PreprocessSpec, note)`` recorded in an opened model's metadata; ImageNet's at the
    model's input size (with a note) when the model records none."""
    if model.metadata.get("preprocess"):
        return (PreprocessSpec.from_dict(model.metadata["preprocess"]),
                model.metadata.get("preprocess_note"))
    spec = imagenet_spec(model.input_shape[-1])
    return spec, ("the model records no preprocessing; using ImageNet's (resize %d, crop %d)"
                  % (spec.resize, spec.size))


ORT_QUIET = 4  # ONNX Runtime's FATAL: nothing of its own reaches stderr


def _first_line(error):
    """The first line of a runtime's exception, for a one-line ``ModelFileError``."""
    text = str(error).strip()
    return (text.splitlines()[0] if text else type(error).__name__)[:200]


class OnnxModel:
    """A ``.onnx`` file run by ONNX Runtime (CPU): ``model(batch) -> logits``. The file is
    untrusted: ``deploy/onnx_check.py`` checks it (operators, signature, external data, and
    its weights, activations and MACs against ``limits``; None: ``Limits()``) before ONNX
    Runtime sees the bytes it checked; every batch is checked against the same budget."""

    runtime = "onnxruntime"

    def __init__(self, path, threads=None, limits=None, checked=None):
        import onnxruntime as ort

        self.path, self.limits = path, limits or Limits()
        if checked is None:
            checked = onnx_check.check_file(path, self.limits)
        # ORT logs a failing node at ERROR (3) itself, before raising: only FATAL may print
        ort.set_default_logger_severity(ORT_QUIET)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or cpu_count()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = ORT_QUIET
        try:
            self.session = ort.InferenceSession(checked.data, options,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own exception types for every load failure
            raise ModelFileError("%s is not a loadable ONNX model (%s)"
                                 % (path, _first_line(e))) from None
        self._input, self._outputs = checked.input_name, checked.output_names
        self._output = self._outputs[0]
        self.input_shape, self.num_classes = checked.input_shape, checked.num_classes
        self.metadata = checked.metadata
        self.budget = {"weights": checked.weights, "activations": checked.activations,
                       "macs": checked.macs}

    def _run(self, names, batch):
        batch = checked_batch(batch, self.input_shape)
        self.limits.check(self.path, batch=batch.shape[0], **self.budget)
        try:
            return self.session.run(names, {self._input: batch})
        except Exception as e:  # ORT's own types (e.g. a static batch that does not fit)
            raise ModelFileError("%s failed to run in ONNX Runtime (%s)"
                                 % (self.path, _first_line(e))) from None

    def __call__(self, batch):
        return self._run([self._output], batch)[0]

    def run_all(self, batch):
        """Every output of the graph, in order (a features model has one per stage)."""
        return self._run(self._outputs, batch)


PRECISIONS = route.PRECISIONS
RUNTIMES = route.RUNTIMES


@contextlib.contextmanager
def _stderr_quiet_if_megengine():
    """Importing OpenVINO looks for CUDA's driver functions; in a process that has loaded
    MegEngine (tools/eval.py), MegEngine's own CUDA stubs answer and print a six-line "Failed
    to load CUDA driver library" banner. An import error still reaches the caller."""
    import sys

    if "megengine" not in sys.modules:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class OpenVinoModel:
    """A ``.onnx`` file run by OpenVINO (CPU): ``model(batch) -> logits``, checked by
    ``deploy/onnx_check.py`` first exactly as ``OnnxModel`` is (OpenVINO gets the checked
    bytes only). ``precision``: "fp32" (also for an int8 QDQ file: its quantized convolutions
    run in int8, VNNI / AMX where the CPU has them, the rest in float32) or "bf16" (bfloat16
    with float32 accumulation, on CPUs with bf16 instructions; logits about 1e-2 relative off
    float32)."""

    runtime = "openvino"
    HINTS = {"fp32": "f32", "int8": "f32", "bf16": "bf16"}

    def __init__(self, path, threads=None, limits=None, precision="fp32", checked=None):
        with _stderr_quiet_if_megengine():
            import openvino as ov
        self.path, self.limits = path, limits or Limits()
        if checked is None:
            checked = onnx_check.check_file(path, self.limits)  # as OnnxModel: before OpenVINO
        try:  # compiling looks for CUDA again (a "debug:" line in a MegEngine process)
            with _stderr_quiet_if_megengine():
                core = ov.Core()
                compiled = core.compile_model(core.read_model(checked.data), "CPU", {
                    "INFERENCE_NUM_THREADS": threads or cpu_count(),
                    "PERFORMANCE_HINT": "LATENCY",
                    "INFERENCE_PRECISION_HINT": self.HINTS[precision]})
        except Exception as e:  # OpenVINO raises its own types for a file it cannot read
            raise ModelFileError("%s is not a loadable ONNX model (%s)"
                                 % (path, _first_line(e))) from None
        self.input_shape, self.num_classes = checked.input_shape, checked.num_classes
        self.metadata = checked.metadata
        self.budget = {"weights": checked.weights, "activations": checked.activations,
                       "macs": checked.macs}
        self._outputs = checked.output_names
        with _stderr_quiet_if_megengine():
            self._request = compiled.create_infer_request()
        self._first = True

    def _infer(self, batch):
        batch = checked_batch(batch, self.input_shape)
        self.limits.check(self.path, batch=batch.shape[0], **self.budget)
        quiet = _stderr_quiet_if_megengine() if self._first else contextlib.nullcontext()
        self._first = False
        try:
            with quiet:  # the first run looks for CUDA once more
                self._request.infer({0: batch})
        except Exception as e:  # OpenVINO's own types
            raise ModelFileError("%s failed to run in OpenVINO (%s)"
                                 % (self.path, _first_line(e))) from None

    def __call__(self, batch):
        self._infer(batch)
        return self._request.get_output_tensor(0).data.copy()

    def run_all(self, batch):
        """Every output of the graph, in order (a features model has one per stage)."""
        self._infer(batch)
        return [self._request.get_output_tensor(i).data.copy()
                for i in range(len(self._outputs))]


class OpenVinoBf16Model(OpenVinoModel):
    """A ``.onnx`` file run by OpenVINO in bfloat16: the reduced-precision route, opt-in
    (``tools/infer.py --precision bf16``) and only on a CPU with bf16 instructions
    (``common.cpus.has_bf16``: AVX-512 BF16 or AMX), where OpenVINO's kernels compute in bf16
    with float32 accumulation. The logits differ from float32 by about 1e-2 relative (the
    README's deploy section has the accuracy on trained models)."""

    def __init__(self, path, threads=None, limits=None, checked=None):
        if not os.path.isfile(path):
            raise ModelFileError("model file not found: %s" % path)
        if not cpus.has_bf16():
            raise ModelFileError("--precision bf16 needs a CPU with bf16 instructions "
                                 "(avx512_bf16 or amx_bf16); this one (%s) has none"
                                 % cpus.cpu_name())
        super().__init__(path, threads, limits, "bf16", checked)


QDQ_OPS = (b"QuantizeLinear", b"DequantizeLinear")


def file_precision(checked):
    """"int8" for a QDQ int8 file (tools/quantize.py records its method; a foreign file is
    looked at for QuantizeLinear / DequantizeLinear nodes), else "fp32"."""
    if checked.metadata.get("int8"):
        return "int8"
    if not any(op in checked.data for op in QDQ_OPS):  # cheap: most float files stop here
        return "fp32"
    import onnx

    nodes = onnx.ModelProto.FromString(checked.data).graph.node  # parsed once already
    return "int8" if any(n.op_type.encode() in QDQ_OPS for n in nodes) else "fp32"


def _route(path, checked, precision, threads, limits, runtime, measure, batch):
    """``route.choose`` for a checked file: its measured choice is cached under the file's
    content and ``batch``; ``measure``: measure on a cache miss (a model of at least
    ``route.MIN_MEASURE_GMACS`` per image)."""
    threads = threads or cpu_count()
    batch = batch or checked.input_shape[0]
    model_key = measurer = None
    if runtime is None and checked.macs >= route.MIN_MEASURE_GMACS * 1e9 \
            and len(route.candidates(precision, route.cpu_flags())) > 1:
        model_key = "%s|batch %d" % (hashlib.sha256(checked.data).hexdigest()[:32], batch)
        if measure:
            def measurer(able):
                return route.measure(path, able, threads, batch, limits)
    return route.choose(precision, threads, forced=runtime, measure=measurer,
                        model_key=model_key)


def open_onnx(path, threads=None, precision="fp32", limits=None, runtime=None, measure=False,
              batch=None):
    """A ``.onnx``, checked (``deploy/onnx_check.py``), then run by the runtime
    ``deploy.route.choose`` picks for its precision on this CPU (``runtime``: forced; an int8
    QDQ file is int8 whatever ``precision`` says, except that bf16 is refused for it).
    ``measure``: time the file in both runtimes on a cache miss (the command-line tools do, at
    ``batch``; the library reads the cache, else follows the rule). The model has ``route``
    (the ``route.Choice``), ``precision`` and ``notes``."""
    if precision not in PRECISIONS:
        raise ModelFileError("unknown precision %r; known: %s" % (precision, ", ".join(PRECISIONS)))
    if runtime is not None and runtime not in RUNTIMES:
        raise ModelFileError("unknown runtime %r; known: %s" % (runtime, ", ".join(RUNTIMES)))
    if not os.path.isfile(path):
        raise ModelFileError("model file not found: %s" % path)
    limits = limits or Limits()
    if precision == "bf16" and not cpus.has_bf16():
        raise ModelFileError("--precision bf16 needs a CPU with bf16 instructions "
                             "(avx512_bf16 or amx_bf16); this one (%s) has none"
                             % cpus.cpu_name())
    checked = onnx_check.check_file(path, limits)
    kind = file_precision(checked)
    if kind == "int8" and precision == "bf16":
        raise ModelFileError("%s is an int8 model; --precision bf16 is for a float .onnx"
                             % path)
    if precision == "int8" and kind != "int8":
        raise ModelFileError("%s is a float model; --precision int8 runs an int8 file "
                             "(write one with tools/quantize.py -o NAME.onnx)" % path)
    precision = kind if kind == "int8" else precision
    choice = _route(path, checked, precision, threads, limits, runtime, measure, batch)
    if choice.runtime == "onnxruntime":
        model = OnnxModel(path, threads, limits=limits, checked=checked)
    elif choice.precision == "bf16":
        model = OpenVinoBf16Model(path, threads, limits=limits, checked=checked)
    else:
        model = OpenVinoModel(path, threads, limits, choice.precision, checked)
    model.route, model.precision, model.notes = choice, choice.precision, []
    return model


@contextlib.contextmanager
def _cache_file(data):
    """A temp file holding ``data`` (the algorithm cache), removed afterwards."""
    fd, path = tempfile.mkstemp(prefix="algo_cache.", suffix=".bin")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)


def _probe(path, threads):
    """Run a ``.mge`` of unknown portability once in a child; ``ModelFileError`` if it fails."""
    from common.children import ChildError

    try:
        base, per_mb = PROBE_DEADLINE_S
        lite_child.probe(path, None, threads, PORTABLE_LAYOUT,
                         base + per_mb * os.path.getsize(path) / 1e6)
    except ChildError as e:
        raise ModelFileError("%s does not run on this CPU (%s): %s; export the model again "
                             "with tools/export.py, whose files are portable"
                             % (path, cpus.cpu_name(), e)) from None


def _read_checked(path, threads, limits, trusted):
    """``(bytes of the .mge at path, its user_info, the child's report)``: looked at first by
    the inspect child (``lite_child.inspect``), whose report is checked against ``limits``; the
    bytes returned are the ones it checked. ``trusted``: a file this process has just written itself (the
    export's check), read here without a child."""
    size = os.path.getsize(path)
    if size > limits.max_memory:
        limits.check(path, weights=size)  # the file alone passes the memory budget
    with open(path, "rb") as f:
        data = f.read()
    if trusted:
        return data, lite.read_user_info(path), None
    base, per_mb = PROBE_DEADLINE_S
    report = lite_child.inspect(path, threads, limits, base + per_mb * len(data) / 1e6)
    if "weights" in report:
        limits.check(path, weights=report["weights"], activations=report["activations"],
                     macs=report["macs"], batch=report["batch"])
    if report.get("run_failed"):
        raise ModelFileError("%s does not run on this CPU (%s): %s; export the model again "
                             "with tools/export.py, whose files are portable"
                             % (path, cpus.cpu_name(), report["error"]))
    if report.get("error"):
        raise ModelFileError(report["error"])
    if report.get("sha256") != hashlib.sha256(data).hexdigest():
        raise ModelFileError("%s changed while it was being checked; open it again" % path)
    return data, report.get("user_info"), report


def open_mge(path, threads=None, limits=None, trusted=False, **lite_options):
    """A ``.mge``: looked at first in a child process (a crafted file can crash MegEngine's
    loader: ``lite_child.inspect`` reads its metadata, weights, activations and MACs, checked
    against ``limits`` (None: ``Limits()``), and runs it once), then loaded by Lite from the
    bytes the child checked, with the algorithm cache and layout it was tuned with where this
    is the CPU they were tuned on. ``trusted``: a file this process has just written (no
    child)."""
    limits = limits or Limits()
    if not os.path.isfile(path):
        raise ModelFileError("model file not found: %s" % path)
    data, info, report = _read_checked(path, threads, limits, trusted)
    metadata = decode_metadata(info, path)
    cache, layout, notes = load_plan(path, metadata)
    metadata.pop("algo_cache", None)
    if metadata.get("format") != METADATA_FORMAT:
        _probe(path, threads)
    lite_options.setdefault("layout", layout)
    lite_options.setdefault("data", data)
    if cache and "algo_cache" not in lite_options:
        with _cache_file(cache) as cache_path:
            model = lite.DumpedModel(path, threads=threads, algo_cache=cache_path,
                                     **lite_options)
    else:
        model = lite.DumpedModel(path, threads=threads, **lite_options)
    model.metadata, model.notes = metadata, notes
    if report is not None:
        model.limits = limits
        model.budget = {k: report[k] for k in ("weights", "activations", "macs")}
    return model


def open_model(path, threads=None, precision="fp32", limits=None, runtime=None, measure=False,
               batch=None, **lite_options):
    """An exported model by its suffix: ``.mge`` (Lite), ``.onnx`` (``open_onnx``: ONNX Runtime
    or OpenVINO, whichever ``deploy.route`` picks for its precision here; ``runtime`` forces
    one, ``measure`` and ``batch`` as there) or ``.bnn`` (packed binary, ``binary_runtime``)."""
    path = os.fspath(path)
    suffix = os.path.splitext(path)[1].lower()
    if precision not in PRECISIONS:
        raise ModelFileError("unknown precision %r; known: %s" % (precision, ", ".join(PRECISIONS)))
    if precision == "bf16" and suffix != ".onnx":
        raise ModelFileError("--precision bf16 runs a .onnx (through OpenVINO); export the "
                             "model with --output NAME.onnx")
    if precision == "int8" and suffix != ".onnx":
        raise ModelFileError("--precision int8 runs an int8 .onnx (tools/quantize.py -o "
                             "NAME.onnx writes one); a .mge runs as it was written")
    if runtime is not None and suffix != ".onnx":
        raise ModelFileError("--runtime picks the runtime of a .onnx; %s is run by its own "
                             "(%s)" % (path, "MegEngine Lite" if suffix == ".mge" else
                                       "the packed binary kernels" if suffix == ".bnn"
                                       else "none"))
    if suffix == ".onnx":
        return open_onnx(path, threads, precision, limits, runtime, measure, batch)
    if suffix == ".mge":
        return open_mge(path, threads, limits=limits, **lite_options)
    if suffix == ".bnn":
        from .binary_runtime import BinaryModel

        return BinaryModel(path, threads, limits=limits)
    raise ModelFileError("%s: unknown model format %r (expected .mge, .onnx or .bnn)"
                         % (path, suffix or "no suffix"))
