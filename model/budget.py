"""What a network will cost, from its description alone: nothing is built or allocated.

A checkpoint records its architecture (a registered name, or a searched network's architecture
dict, the contents of an ``arch.json``) and its weights imply the number of classes. Both are
untrusted: a dict can declare a 10^6-channel conv, a ``linear.weight`` of shape (10^9, 0) holds
no bytes yet asks for a 10^9-class head. ``estimate(arch, num_classes, image_size, deploy)``
walks the description (the variant tables of ``model.repvgg`` / ``model.repvggplus`` /
``model.binary.resnet``, or the arch dict's layers) and returns

- ``params``       parameters (conv and linear weights, biases, BatchNorm affine), as
  ``model.opcount.count_params`` counts them on the built model;
- ``weights``      bytes of parameters and BatchNorm running statistics (float32);
- ``macs``         multiply-accumulates for one image (binary convolutions counted as full ones:
  an upper bound);
- ``activations``  an upper bound of the bytes live at once for one image: at the worst layer its
  input, every branch output and the result (float32).

``check(limits, what, ...)`` hands these to ``common.limits.Limits.check``; ``model.checkpoint``
calls it before building any model. tests/test_hostile_checkpoints.py checks ``params`` and
``macs`` against ``model.opcount`` on built models (they agree within a few percent: SE blocks and
the binary blocks' scale factors are counted approximately).
"""
import math
import numbers

from errors import UserError

BYTES = 4                      # float32
DEFAULT_IMAGE_SIZE = 224
# A registered name this module has no table for: its classifier is bounded with this many
# features (wider than any registered network's), so a huge class count is still caught.
FALLBACK_FEATURES = 4096
SE_REDUCTION = 16              # RepVGG-D2se's SE blocks


class _Tally:
    """Running totals over a network walked layer by layer at the current resolution."""

    def __init__(self, size):
        self.h = self.w = int(size)
        self.params = self.buffers = self.macs = self.peak = 0

    def out(self, stride):
        return -(-self.h // stride), -(-self.w // stride)

    def conv(self, c_in, c_out, k, stride=1, groups=1, bn=True, bias=False):
        """A 'same'-padded conv from the current resolution (which it does not change)."""
        ho, wo = self.out(stride)
        per_output = (c_in // max(groups, 1)) * k * k
        self.params += c_out * per_output + (c_out if bias else 0) + (2 * c_out if bn else 0)
        self.buffers += 2 * c_out if bn else 0
        self.macs += ho * wo * c_out * per_output

    def bn(self, channels):
        self.params += 2 * channels
        self.buffers += 2 * channels

    def se(self, channels, reduction=SE_REDUCTION):
        mid = channels // reduction
        self.params += 2 * channels * mid + mid + channels
        self.macs += 2 * channels * mid

    def linear(self, c_in, c_out):
        self.params += c_in * c_out + c_out
        self.macs += c_in * c_out

    def live(self, c_in, c_out, outputs, stride=1):
        """At one layer: its input, ``outputs`` tensors of ``c_out`` at the output resolution."""
        ho, wo = self.out(stride)
        self.peak = max(self.peak, c_in * self.h * self.w + outputs * c_out * ho * wo)

    def move(self, stride):
        self.h, self.w = self.out(stride)

    def result(self):
        return {"params": self.params, "weights": BYTES * (self.params + self.buffers),
                "macs": self.macs, "activations": BYTES * self.peak}


def _repvgg_block(t, c_in, c_out, stride, groups=1, deploy=False, se=False, qa=False,
                  se_reduction=SE_REDUCTION):
    t.live(c_in, c_out, 2 if deploy else 5, stride)  # branches, their sum, the result
    if deploy:
        t.conv(c_in, c_out, 3, stride, groups, bn=False, bias=True)
    else:
        t.conv(c_in, c_out, 3, stride, groups)
        t.conv(c_in, c_out, 1, stride, groups, bn=not qa)
        if qa:
            t.bn(c_out)
        elif c_in == c_out and stride == 1:
            t.bn(c_in)
    if se:
        t.se(c_out, se_reduction)
    t.move(stride)


def _inverted_residual(t, c_in, c_out, stride, kernel, expansion, groups):
    mid = c_in * expansion
    t.live(c_in, mid, 1)
    t.conv(c_in, mid, 1, 1, groups)
    t.live(mid, mid, 1, stride)
    t.conv(mid, mid, kernel, stride, mid)
    t.move(stride)
    t.live(mid, c_out, 2)
    t.conv(mid, c_out, 1, 1, groups)


def _binary_primitive(t, name, c_in, c_out, stride):
    from .binary import primitives

    spec = primitives.primitive_spec(name)
    kind = spec.kind
    if kind == "skip" or (kind == "skip_or_conv" and stride == 1):
        t.live(c_in, c_out, 1, stride)
    elif kind in ("conv", "skip_or_conv"):
        t.live(c_in, c_out, 3, stride)
        t.conv(c_in, c_out, spec.kernel_size, stride)
    elif kind == "resnet":
        t.live(c_in, c_out, 4, stride)
        t.conv(c_in, c_out, 3, stride)
        t.conv(c_in, c_out, 3, stride)  # the shortcut, at most a 3x3 conv
        t.move(stride)
        t.conv(c_out, c_out, 3, 1)
        return
    elif kind == "vgg":
        t.live(c_in, c_out, 3)
        t.conv(c_in, c_out, 3, 1)
    else:  # nin: 3x3 (stride), 1x1, 1x1
        t.live(c_in, c_out, 3, stride)
        t.conv(c_in, c_out, 3, stride)
        t.move(stride)
        t.conv(c_out, c_out, 1)
        t.conv(c_out, c_out, 1)
        return
    t.move(stride)


def _derived_layer(t, op, c_in, c_out, stride, deploy):
    from . import fbnet

    if op == "repvgg":
        _repvgg_block(t, c_in, c_out, stride, deploy=deploy)
    elif op == "conv_k3":
        t.live(c_in, c_out, 2, stride)
        t.conv(c_in, c_out, 3, stride)
        t.move(stride)
    elif op == "skip":
        t.live(c_in, c_out, 1, stride)
        if c_in != c_out or stride != 1:
            t.conv(c_in, c_out, 1, stride)
        t.move(stride)
    elif op in fbnet.FBNET_BLOCKS:
        factory = fbnet.FBNET_BLOCKS[op]
        kw = factory.keywords
        _inverted_residual(t, c_in, c_out, stride, kw["kernel"], kw["expansion"], kw["groups"])
    else:
        _binary_primitive(t, op, c_in, c_out, stride)


def _positive_int(value, what):
    """A positive whole number (an int, a numpy integer or an integral float) as an int."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        number = int(value)
    elif isinstance(value, float) and math.isfinite(value) and value == int(value):
        number = int(value)
    else:
        number = 0
    if number < 1:
        raise UserError("the architecture's %s must be a positive whole number, got %.40r"
                        % (what, value))
    return number


def _derived(arch, num_classes, size, deploy):
    stem, head = arch["stem"], arch.get("head") or {}
    if not isinstance(head, dict) or not all(isinstance(l, dict) for l in arch["layers"]):
        raise UserError("the architecture's head and layers must be JSON objects")
    channels = _positive_int(stem["channels"], "stem channels")
    stride = _positive_int(stem.get("stride", 1), "stem stride")
    t = _Tally(size)
    t.live(3, channels, 2, stride)
    t.conv(3, channels, 3, stride)
    t.move(stride)
    for i, layer in enumerate(arch["layers"]):
        c_in = _positive_int(layer["C_in"], "layer %d C_in" % i)
        c_out = _positive_int(layer["C_out"], "layer %d C_out" % i)
        _derived_layer(t, layer["op"], c_in, c_out, layer["stride"], deploy)
        channels = c_out
    head = head.get("channels", 0)
    if head:
        head = _positive_int(head, "head channels")
        t.live(channels, head, 2)
        t.conv(channels, head, 1)
        channels = head
    t.linear(channels, num_classes)
    return t.result()


def _repvgg(name, num_classes, size, deploy):
    from .repvgg import GROUPWISE_LAYERS, REPVGG_VARIANTS, stage_widths

    qa = name.startswith("QA")
    num_blocks, width_multiplier, groups, use_se = REPVGG_VARIANTS[name[2:] if qa else name]
    widths = stage_widths(width_multiplier)
    t = _Tally(size)
    block = dict(deploy=deploy, se=use_se, qa=qa)
    _repvgg_block(t, 3, widths[0], 2, **block)
    c_in, index = widths[0], 1
    for planes, n in zip(widths[1:], num_blocks):
        for stride in [2] + [1] * (n - 1):
            g = groups if groups > 1 and index in GROUPWISE_LAYERS else 1
            _repvgg_block(t, c_in, planes, stride, g, **block)
            c_in, index = planes, index + 1
    t.linear(widths[4], num_classes)
    return t.result()


def _repvggplus(name, num_classes, size, deploy):
    from .repvgg import stage_widths
    from .repvggplus import REPVGGPLUS_VARIANTS

    num_blocks, width_multiplier, use_post_se = REPVGGPLUS_VARIANTS[name]
    w = stage_widths(width_multiplier)
    t = _Tally(size)
    block = dict(deploy=deploy, se=use_post_se, se_reduction=4)  # RepVGGplusBlock's SE
    _repvgg_block(t, 3, w[0], 2, **block)
    stages = [(w[0], w[1], num_blocks[0], 2, True), (w[1], w[2], num_blocks[1], 2, True),
              (w[2], w[3], num_blocks[2] // 2, 2, True), (w[3], w[3], num_blocks[2] // 2, 1, False),
              (w[3], w[4], num_blocks[3], 2, False)]
    for c_in, planes, n, stride, aux in stages:
        for s in [stride] + [1] * (n - 1):
            _repvgg_block(t, c_in, planes, s, **block)
            c_in = planes
        if aux and not deploy:  # the auxiliary classifiers of the train form
            t.conv(planes, planes, 3, 2)
            t.linear(planes, num_classes)
    t.linear(w[4], num_classes)
    return t.result()


def _binary_resnet(name, num_classes, size):
    from .binary import resnet

    style = name.rsplit("-", 1)[1]
    t = _Tally(size)
    width = resnet.STEM_CHANNELS
    t.live(3, width, 2, 2)
    if style == "awnas":
        t.conv(3, width, 3, 2)
        t.move(2)
        t.conv(width, width, 3, 2)
        t.move(2)
        cells = [("xnor_resnet_block", c, s) for c, s in resnet.AWNAS_CELLS]
    else:
        t.bn(3)
        t.conv(3, width, 7, 2)
        t.move(4)
        t.bn(width)
        cells = [(None, c, s) for c, s in resnet.BMXNET_BLOCKS]
    c_in = width
    for primitive, c_out, stride in cells:
        if primitive:
            _binary_primitive(t, primitive, c_in, c_out, stride)
        else:  # BinaryResNetEBlock: one binary 3x3 conv, a pooled 1x1 shortcut when reducing
            t.live(c_in, c_out, 3, stride)
            t.conv(c_in, c_out, 3, stride)
            if c_in != c_out or stride != 1:
                t.conv(c_in, c_out, 1, 1)
            t.move(stride)
        c_in = c_out
    t.linear(512, num_classes)
    return t.result()


def estimate(arch, num_classes, image_size=None, deploy=False):
    """``{"params", "weights", "macs", "activations"}`` of ``arch`` (a registered name or an
    architecture dict already checked by ``model.derived.check_arch``) with ``num_classes``
    outputs at ``image_size`` (default: the dict's recorded size, else 224)."""
    num_classes = _positive_int(num_classes, "number of classes")
    if isinstance(arch, dict):
        size = image_size or arch.get("image_size") or DEFAULT_IMAGE_SIZE
        return _derived(arch, num_classes, _positive_int(size, "image size"), deploy)
    size = _positive_int(image_size or DEFAULT_IMAGE_SIZE, "image size")
    from .repvgg import REPVGG_VARIANTS
    from .repvggplus import REPVGGPLUS_VARIANTS

    if arch in REPVGG_VARIANTS or (arch.startswith("QA") and arch[2:] in REPVGG_VARIANTS):
        return _repvgg(arch, num_classes, size, deploy)
    if arch in REPVGGPLUS_VARIANTS:
        return _repvggplus(arch, num_classes, size, deploy)
    if arch.startswith("BinaryResNet18-"):
        return _binary_resnet(arch, num_classes, size)
    t = _Tally(size)
    t.linear(FALLBACK_FEATURES, num_classes)
    return t.result()


def check(limits, what, arch, num_classes, image_size=None, deploy=False):
    """Refuse (``common.limits.LimitError``, one line) a network whose description declares more
    than ``limits`` allow; returns the estimate."""
    cost = estimate(arch, num_classes, image_size, deploy)
    limits.check(what, weights=cost["weights"], activations=cost["activations"],
                 macs=cost["macs"], batch=1)
    return cost

