"""Exporting a checkpoint for deployment: build the deploy form, write ``.mge``, ``.onnx`` or (a
binary network) ``.bnn`` with its metadata, load the file back with the runtime that will run it
and check its logits against the eager model before the file is renamed into place
(``common.atomic``).

``tools/export.py`` is the command line over ``export``. This is the one module of ``deploy/``
that imports ``model`` (lazily): the inference side (``runtime``, ``lite``, ``preprocess``) does
not.
"""
import base64
import dataclasses
import logging
import os

import numpy as np

from common.atomic import atomic_path
from errors import UserError

from . import dump, modelfile, preprocess, runtime

log = logging.getLogger(__name__)

FORMATS = ("mge", "onnx", "bnn")
# .bnn (deploy/binary_runtime.py) is checked twice. Every binary conv, run on the input the
# eager emulation gave it, must reproduce the emulation's integer counts exactly (tolerance 0:
# binary_export.check_layers). The logits, which go through the float parts too, are held to
# 0.2 of the largest one and the same top-1 (bar near-ties): they are usually within 1e-6, but an
# activation at a tie (exactly 0, or within float32 rounding of it: about one 224x224 image in
# ten) binarizes by whichever rounding computed it, and such a flip moved a ResNet-18's logits
# by up to 5e-2, between MegEngine's own eager and .mge runs of the emulation as well
# (docs/binary-inference.md). A wrong scale, pad rule or weight bit fails the first check.
BNN_TOLERANCE = 0.2


class ExportCheckError(UserError):
    """The exported file does not compute what the eager model computes."""


@dataclasses.dataclass
class Source:
    """What is exported: the deploy-form model and what describes it."""
    deploy: object
    train: object            # the train-form model, or None for a deploy-form checkpoint
    arch: str                # a readable architecture name
    spec: preprocess.PreprocessSpec
    spec_note: str = None    # set when the spec was not recorded (ImageNet's assumed)
    classes: list = None
    # a features or dense model: [{"name", "channels", "reduction"}] per output, in order
    # (a classifier has none: one (N, classes) output named dump.OUTPUT_NAME)
    outputs: list = None
    graph_onnx: bool = False  # ONNX from the traced graph (onnx_graph), not the module walk

    def metadata(self, input_shape):
        metadata = {"arch": self.arch, "classes": self.classes,
                    "preprocess": self.spec.to_dict() if self.spec else None,
                    "preprocess_note": self.spec_note, "input_shape": list(input_shape),
                    "form_in": "train" if self.train is not None else "deploy"}
        if self.outputs:
            metadata["outputs"] = [dict(o) for o in self.outputs]
        return metadata

    def output_names(self):
        return [o["name"] for o in self.outputs] if self.outputs else [dump.OUTPUT_NAME]

    def eager(self, model, x):
        """``model``'s output on ``x``: a list of arrays for a features model, else the
        logits."""
        import megengine as mge

        out = model(mge.tensor(x))
        if not self.outputs:
            return out.numpy()
        from model.parity import named_outputs

        return [array for _, array in named_outputs(out)]


class FlatOutputs:
    """``module``'s outputs (a tensor, or a list / tuple / dict of them) as a flat list, the
    form a traced graph with several named outputs returns."""

    def __init__(self, module):
        self.module = module

    def __call__(self, x):
        return _flat(self.module(x))


def _flat(out):
    if isinstance(out, dict):
        return [t for value in out.values() for t in _flat(value)]
    if isinstance(out, (list, tuple)):
        return [t for value in out for t in _flat(value)]
    return [out]


def build_model(load=None, arch=None, num_classes=1000, size=None):
    """A ``Source`` from the checkpoint file ``load`` (train or deploy form; ``arch`` overrides
    the recorded architecture) or, with ``load=None``, a randomly initialised ``arch`` (a
    registered name or an ``arch.json``)."""
    from common.checkpoint import load_checkpoint
    from model import convert_to_deploy, is_deploy
    from model.checkpoint import arch_label, build_model as build_arch, model_from_checkpoint
    from model.checkpoint import resolve_arch

    if load:
        checkpoint = load_checkpoint(load)
        model, info = model_from_checkpoint(checkpoint, arch, load)
        label = arch_label(info["arch"])
        spec, note = preprocess.spec_of_checkpoint(checkpoint, size)
        classes = checkpoint.get("classes") if isinstance(checkpoint, dict) else None
        classes = [str(c) for c in classes] if classes and len(classes) == info["num_classes"] \
            else None
    else:
        if not arch:
            raise UserError("--random-init needs --arch")
        model, label = build_arch(arch, num_classes), arch_label(resolve_arch(arch))
        spec, note, classes = preprocess.imagenet_spec(size or 224), None, None
    model.eval()
    train = None if is_deploy(model) else model
    deploy = convert_to_deploy(model) if train is not None else model
    deploy.eval()
    return Source(deploy, train, label, spec, note, classes)


def check_exported(run, x, references, what, tolerance=None):
    """Compare ``run(x)`` with each ``(name, expected_output)``; ``ExportCheckError`` on a
    mismatch. An output may be a list of arrays (a features model): each is compared.
    Returns the ``model.parity.Parity`` results."""
    from model.parity import DEFAULT_TOLERANCE, compare_outputs

    tolerance = DEFAULT_TOLERANCE if tolerance is None else tolerance
    out = run(x)
    results = [compare_outputs("%s vs %s" % (what, name), expected, out, tolerance)
               for name, expected in references]
    bad = [r for r in results if not r.ok]
    if bad:
        raise ExportCheckError("the %s does not match the eager model: %s" % (what, "; ".join(
            "%s: max relative difference %.2e (tolerance %.0e), top-1 agreement %.0f%%"
            % (r.name, r.max_rel, r.tolerance, 100 * r.top1_agree) for r in bad)))
    return results


def check_dumped(path, x, references, threads=None, tolerance=None, fmt=None, all_outputs=False):
    """Run the exported file at ``path`` (``fmt`` 'mge', 'onnx' or 'bnn'; default: by its suffix)
    on ``x`` with the runtime ``tools/infer.py`` uses (metadata, layout and algorithm cache) and
    compare with ``references`` (with ``all_outputs``, lists of every output's array)."""
    fmt = fmt or os.path.splitext(os.fspath(path))[1].lower().lstrip(".")
    if fmt == "bnn":
        from .binary_runtime import BinaryModel

        model, what = BinaryModel(os.fspath(path), threads), "packed binary model"
        tolerance = BNN_TOLERANCE if tolerance is None else tolerance
    elif fmt == "onnx":
        model, what = runtime.OnnxModel(os.fspath(path), threads), "exported ONNX graph"
    else:
        model, what = runtime.open_mge(os.fspath(path), threads), "dumped graph"
    return check_exported(model.run_all if all_outputs else model, x, references, what,
                          tolerance)


def write_checked(path, write, check):
    """``write(tmp)`` writes a file next to ``path``, ``check(tmp)`` raises if it is wrong; then
    the file is renamed to ``path`` (``common.atomic``). On any failure the temp file is removed
    and ``path`` (if it existed) is left unchanged."""
    with atomic_path(path) as tmp:
        write(tmp)
        return check(tmp)


def format_of(output, requested=None):
    """'mge', 'onnx' or 'bnn': ``requested`` (``--format``) or the suffix of ``output``; they
    must agree, because ``tools/infer.py`` tells the formats apart by the suffix."""
    suffix = os.path.splitext(os.fspath(output))[1].lower().lstrip(".")
    if requested and suffix in FORMATS and suffix != requested:
        raise UserError("--format %s but the output is named %s; name it .%s"
                        % (requested, output, requested))
    fmt = requested or (suffix if suffix in FORMATS else None)
    if fmt is None:
        raise UserError("cannot tell the format of %s: name it .mge, .onnx or .bnn (or pass "
                        "--format)" % output)
    if suffix != fmt:
        raise UserError("the output %s must end in .%s (tools/infer.py reads the format from "
                        "the suffix)" % (output, fmt))
    return fmt


@dataclasses.dataclass
class MgeWritten:
    """What a ``.mge`` export ended up with (the options may have fallen back)."""
    options: str             # the ``--options`` name in effect
    algo_cache: bool         # whether the file carries a fast-run algorithm cache
    notes: list              # one line each: what fell back and why


def write_mge(source, x, path, options=dump.DEFAULT_OPTIONS, threads=None, algo_cache=True,
              deadline=None):
    """Trace and dump ``source.deploy`` to ``path`` with its metadata (portable graph options);
    a CPU-specific layout is probed in a child first and dropped, with a note, where this CPU
    does not run it; with ``algo_cache``, fast-run profiles the file in a child and it is dumped
    again carrying the choices. Each child has ``deadline`` seconds (default: scaled to the
    model's forward time, ``lite_child.deadlines``). Returns an ``MgeWritten``."""
    import time

    from common import cpus
    from common.children import ChildError

    from . import lite_child

    graph_options, layout = dump.split_options(options)
    start = time.perf_counter()
    graph, _ = dump.trace_model(FlatOutputs(source.deploy) if source.outputs else source.deploy,
                                x)
    probe_s, profile_s = ((deadline, deadline) if deadline
                          else lite_child.deadlines(time.perf_counter() - start))
    metadata = dict(source.metadata(x.shape), graph_options=graph_options)
    notes, cache = [], None

    def write():
        dump.write_graph(graph, path, graph_options, modelfile.encode_metadata(metadata),
                         source.output_names())

    write()
    if layout != dump.PORTABLE_LAYOUT:
        try:
            lite_child.probe(path, x, threads, layout, probe_s)
        except ChildError as e:
            notes.append("--options %s does not run on this CPU (%s: %s); exported with %s "
                         "(portable) instead" % (options, cpus.cpu_name(), e, graph_options))
            layout = dump.PORTABLE_LAYOUT
    if algo_cache:
        try:
            cache = lite_child.profile_algorithms(path, x, threads, layout, profile_s)
        except ChildError as e:
            notes.append("profiling the algorithms failed (%s); exported without the algorithm "
                         "cache (slower)" % e)
    if cache is not None or layout != dump.PORTABLE_LAYOUT:
        metadata.update(layout=layout, cpu=cpus.cpu_name(), cpu_fingerprint=cpus.cpu_fingerprint())
    if cache is not None:
        metadata.update(algo_cache=base64.b64encode(cache).decode("ascii"),
                        algo_cache_threads=threads)
    write()
    return MgeWritten(dump.options_name(graph_options, layout), cache is not None, notes)


def write_onnx(source, x, path):
    """A classifier through the module walk (``onnx_export``); a features or dense model (a
    backbone, a user's segmenter) through its traced graph (``onnx_graph``)."""
    metadata = dict(source.metadata(x.shape), format=modelfile.METADATA_FORMAT)
    with open(path, "wb") as f:
        if source.outputs or source.graph_onnx:
            from . import onnx_graph

            onnx_graph.export_onnx(FlatOutputs(source.deploy), x[:1], f, source.output_names(),
                                   metadata)
        else:
            from .onnx_export import export_onnx

            export_onnx(source.deploy, f, x.shape, metadata)


def write_bnn(source, x, path, program=None):
    """The packed binary model (``deploy/binary_export.py``) with its metadata; ``program``: one
    already built from ``source.deploy``."""
    from . import binary_export, binary_runtime

    program = program or binary_export.build_program(source.deploy)
    metadata = dict(source.metadata(x.shape), binary_layers=program.binary_layers)
    binary_runtime.write(path, program, modelfile.encode_metadata(metadata), x.shape)
    return program


def check_binary_layers(source, program, x):
    """``ExportCheckError`` unless every packed binary conv gives the emulation's integer counts
    exactly on ``x``; returns a ``model.parity.Parity`` row for the report."""
    from model.parity import Parity

    from .binary_export import check_layers

    count, worst, problems = check_layers(source.deploy, program, x)
    if problems:
        raise ExportCheckError("the packed binary convs do not count what the emulation counts: "
                               + "; ".join(problems[:3]))
    return Parity("%d binary convs, exact counts" % count, 0.0, worst, 1.0, 0, 0, 0.0)


def check_batch(spec, batch, images=None, seed=0):
    """The input an export is checked on: ``images`` prepared with ``spec`` when given, else
    generated images that differ per sample (``model.parity.sample_inputs``)."""
    if images:
        prepared = [preprocess.preprocess_image(p, spec) for p in images]
        reps = -(-batch // len(prepared))
        return np.stack((prepared * reps)[:batch])
    from model.parity import sample_inputs

    return sample_inputs(np.random.default_rng(seed), (batch, 3, spec.size, spec.size))


@dataclasses.dataclass
class Exported:
    checks: list             # ``model.parity.Parity`` results of the check
    written: object = None   # .mge: the MgeWritten; .bnn: the binary_export.Program


def export(source, output, fmt, x, options=dump.DEFAULT_OPTIONS, threads=None,
           algo_cache=True, deadline=None):
    """Write ``source`` to ``output`` as ``fmt`` and check it on ``x`` against the eager deploy
    model (and the eager train model for a train-form source): an ``Exported``."""
    program = None
    if fmt == "bnn":  # a model with nothing to pack is refused before any work
        from .binary_export import build_program

        program = build_program(source.deploy)
    references = [("eager deploy", source.eager(source.deploy, x))]
    if source.train is not None:
        references.append(("eager train", source.eager(source.train, x)))
    result = Exported(None)
    if fmt == "onnx":
        def write(tmp):
            write_onnx(source, x, tmp)
    elif fmt == "bnn":
        def write(tmp):
            result.written = write_bnn(source, x, tmp, program)
    else:
        def write(tmp):
            result.written = write_mge(source, x, tmp, options, threads, algo_cache, deadline)
    def check(tmp):  # a .bnn's exact per-conv check first: its message is the more precise
        exact = [check_binary_layers(source, program, x)] if fmt == "bnn" else []
        return check_dumped(tmp, x, references, threads, fmt=fmt,
                            all_outputs=bool(source.outputs)) + exact

    try:
        result.checks = write_checked(output, write, check)
    except ExportCheckError as e:
        if fmt == "bnn" and program.initial_batchnorm:
            raise ExportCheckError("%s (its BatchNorm layers hold their initial statistics, so "
                                   "many activations are exactly 0 and the float emulation's "
                                   "rounding picks their sign: export a trained model)" % e) \
                from None
        raise
    return result


def output_entries(outputs, input_shape, names):
    """The ``"outputs"`` metadata of a model whose outputs on an input of ``input_shape`` are
    the arrays ``outputs``: name, channels and reduction (input height / output height) each."""
    entries = []
    for name, out in zip(names, outputs):
        shape = np.shape(out)
        channels = int(shape[1]) if len(shape) > 1 else None
        reduction = input_shape[2] // shape[2] if len(shape) == 4 and shape[2] \
            and input_shape[2] % shape[2] == 0 else None
        entries.append({"name": name, "channels": channels, "reduction": reduction})
    return entries


def features_source(source, out_indices=None):
    """``source`` (a classifier) as its backbone: one output per stage in ``out_indices``
    (default: all), named ``stage<i>`` and recorded in the metadata (``tools/export.py
    --features``)."""
    from model.backbone import Backbone

    deploy = Backbone(source.deploy, out_indices)
    train = Backbone(source.train, out_indices) if source.train is not None else None
    for net in (deploy, train):
        if net is not None:
            net.eval()
    outputs = [{"name": e["name"], "channels": e["channels"], "reduction": e["reduction"]}
               for e in deploy.feature_info]
    return dataclasses.replace(source, deploy=deploy, train=train, classes=None, outputs=outputs,
                               arch="%s backbone" % source.arch)


def module_source(module, input_shape, arch=None, output_names=None, spec=None):
    """A ``Source`` for any module (a backbone, a user's detector or segmenter with RepVGG
    blocks anywhere inside): its deploy form by ``convert_to_deploy``, its outputs named by
    ``output_names``, else the backbone's ``feature_info`` names, else ``output0``, ...
    A single (N, classes) output is exported as a classifier's (no ``"outputs"`` metadata)."""
    import megengine as mge
    from model import convert_to_deploy, is_deploy
    from model.parity import named_outputs

    if len(input_shape) != 4:
        raise UserError("input_shape must be (N, C, H, W), got %s" % (tuple(input_shape),))
    module.eval()
    train = None if is_deploy(module) else module
    deploy = convert_to_deploy(module) if train is not None else module
    deploy.eval()
    outs = [a for _, a in named_outputs(deploy(mge.tensor(np.zeros(input_shape, np.float32))))]
    if output_names is None:
        info = getattr(deploy, "feature_info", None)
        output_names = info.names() if info is not None and len(info) == len(outs) else \
            ["output%d" % i for i in range(len(outs))]
    if len(output_names) != len(outs) or len(set(output_names)) != len(outs):
        raise UserError("output_names %s: give %d distinct names, one per output"
                        % (list(output_names), len(outs)))
    dense = len(outs) > 1 or np.ndim(outs[0]) != 2
    if spec is None and input_shape[2] == input_shape[3]:
        spec = preprocess.imagenet_spec(int(input_shape[2]))
    return Source(deploy, train, arch or type(module).__name__, spec,
                  outputs=output_entries(outs, input_shape, output_names) if dense else None,
                  graph_onnx=True)


def export_module(module, input_shape, path, arch=None, output_names=None, spec=None,
                  threads=None, algo_cache=False, options=dump.DEFAULT_OPTIONS, seed=0,
                  check_inputs=None):
    """Export any module to ``path``, the format by its suffix (``.mge``: traced and dumped,
    any MegEngine operator; ``.onnx``: the operators ``deploy/onnx_graph.py`` covers), for
    input ``input_shape`` (N, C, H, W). A train-form module is fused first
    (``convert_to_deploy``, the module itself is left as it is). The file is checked as
    ``tools/export.py`` checks it: loaded back with the runtime that will run it (Lite, ONNX
    Runtime) and every output compared with the eager deploy and train forms on generated
    images to float32 rounding, before it is renamed into place. Returns the ``Exported``."""
    fmt = format_of(path)
    if fmt == "bnn":
        raise UserError("export_module writes .mge or .onnx; a binary network goes through "
                        "tools/export.py")
    source = module_source(module, tuple(int(d) for d in input_shape), arch, output_names,
                           spec)
    from model.parity import sample_inputs

    # check_inputs: real images of the task (a model fine-tuned on narrow data may overflow on
    # generated ones); default: generated images that differ per sample
    x = sample_inputs(np.random.default_rng(seed), tuple(int(d) for d in input_shape)) \
        if check_inputs is None else np.asarray(check_inputs, np.float32)
    return export(source, path, fmt, x, options, threads, algo_cache=algo_cache)
