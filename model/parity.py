"""Checking that a deploy-form model computes what its train form computes (eval mode)."""
import dataclasses

import numpy as np

import megengine as mge
import megengine.module as M

from .reparam import convert_to_deploy

# float32 rounding: the fused conv sums the same products in another order. Measured over every
# named variant at 224x224 with randomized BN the worst case is about 2e-6 of the output's
# magnitude; 1e-5 leaves room for other CPUs' summation orders, 1e-2 would hide real bugs.
DEFAULT_TOLERANCE = 1e-5


def randomize_batchnorm(model, rng, calibration_input):
    """Give every BatchNorm non-trivial statistics and affine parameters.

    A freshly built BN is the identity map (mean 0, var 1, gamma 1, beta 0), which hides fusion
    bugs such as a scale applied to the wrong channel. Purely random statistics have the opposite
    problem: through a deep stack the input's signal dies and every input gives the same logits,
    so the check would only test biases. Here the running statistics are first measured on
    ``calibration_input`` (one train-mode pass, so each channel gets its own real mean and
    variance), then perturbed, and gamma / beta are drawn at random.
    """
    bns = [m for _, m in model.named_modules() if isinstance(m, M.BatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # running stats := this batch's stats
    model.train()
    model(mge.tensor(calibration_input))
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
        shape, c = bn.running_mean.shape, bn.num_features

        def draw(values):
            return mge.tensor(np.asarray(values, np.float32).reshape(shape))

        std = np.sqrt(bn.running_var.numpy().reshape(-1))
        bn.running_mean[...] = bn.running_mean + draw(rng.normal(0.0, 0.3, c) * std)
        bn.running_var[...] = bn.running_var * draw(rng.uniform(0.5, 2.0, c))
        if bn.affine:  # a BN without affine parameters (affine=False) has none to draw
            bn.weight[...] = draw(rng.uniform(0.3, 1.2, c))
            bn.bias[...] = draw(rng.normal(0.0, 0.3, c))
    model.eval()
    return model


def calibration_inputs(rng, shape, total_stride=32, min_values=32):
    """Inputs for ``randomize_batchnorm``'s calibration pass: ``sample_inputs`` with enough
    samples that the smallest feature map gives every channel ``min_values`` values.

    The statistics of a BN are measured over batch x height x width values per channel. A
    RepVGG at 32x32 ends in 1x1 maps, so a batch of 2 measures each variance from 2 values:
    some come out near zero, the BN then amplifies its input by up to ``1/sqrt(eps)``, float32
    rounding of the fused conv grows with it, and train and deploy form differ by 1e-2 of the
    output (RepVGG-D2se at 32x32): a false alarm about the fusion. Real trained networks do not
    have such channels.
    """
    n, c, h, w = shape
    last = max(1, h // total_stride) * max(1, w // total_stride)
    return sample_inputs(rng, (max(n, -(-min_values // last)), c, h, w))


def sample_inputs(rng, shape):
    """Test images that differ per sample in more than noise.

    White noise has the same statistics in every sample, so after global pooling two noise images
    give almost the same logits and a check on logits would barely see the input. Each sample
    here gets its own channel offsets, contrast and a smooth spatial ramp.
    """
    n, c, h, w = shape
    offset = rng.normal(0.0, 1.0, (n, c, 1, 1))
    contrast = rng.uniform(0.3, 2.0, (n, 1, 1, 1))
    ramp = (np.linspace(-1, 1, h)[:, None] * rng.normal(0, 1, (n, c, 1, 1))
            + np.linspace(-1, 1, w)[None, :] * rng.normal(0, 1, (n, c, 1, 1)))
    return (offset + ramp + contrast * rng.standard_normal(shape)).astype(np.float32)


@dataclasses.dataclass
class Parity:
    name: str
    max_abs: float
    max_rel: float        # max |train - deploy| / max |train|
    top1_agree: float     # fraction of samples whose argmax agrees
    disagreements: int    # samples whose argmax differs
    near_ties: int        # ... of which the top two train scores differ by <= 2 max_abs
    tolerance: float

    @property
    def ok(self):
        # An argmax may flip only where rounding could flip it: between near-tied scores.
        return self.max_rel <= self.tolerance and self.disagreements <= self.near_ties


def compare(name, train_out, deploy_out, tolerance=DEFAULT_TOLERANCE):
    """Compare two (N, C) or (N, C, H, W) outputs; top-1 is over C (spatially pooled)."""
    a, b = np.asarray(train_out, np.float64), np.asarray(deploy_out, np.float64)
    if a.shape != b.shape:
        raise ValueError("%s: output shapes differ: %s vs %s" % (name, a.shape, b.shape))
    diff = np.abs(a - b)
    max_abs = float(diff.max())
    max_rel = max_abs / max(float(np.abs(a).max()), 1e-30)
    sa = a.reshape(a.shape[0], a.shape[1], -1).mean(-1)
    sb = b.reshape(b.shape[0], b.shape[1], -1).mean(-1)
    agree = sa.argmax(1) == sb.argmax(1)
    top2 = np.sort(sa, axis=1)[:, -2:]
    near_ties = int(np.sum(~agree & (top2[:, 1] - top2[:, 0] <= 2 * max_abs)))
    return Parity(name, max_abs, max_rel, float(agree.mean()), int(np.sum(~agree)), near_ties,
                  tolerance)


def named_outputs(out, name="output"):
    """A model's output as ``[(name, numpy array)]``: one tensor, or the tensors of a list,
    tuple or dict of them (a backbone's feature maps, a detector's heads), nested or not."""
    if isinstance(out, dict):
        return [item for key, value in out.items()
                for item in named_outputs(value, "%s[%s]" % (name, key))]
    if isinstance(out, (list, tuple)):
        return [item for i, value in enumerate(out)
                for item in named_outputs(value, "%s[%d]" % (name, i))]
    return [(name, np.asarray(out.numpy() if hasattr(out, "numpy") else out))]


def combine(name, results):
    """One ``Parity`` for several outputs: the worst difference, all disagreements."""
    if len(results) == 1:
        return dataclasses.replace(results[0], name=name)
    return Parity(name, max(r.max_abs for r in results), max(r.max_rel for r in results),
                  min(r.top1_agree for r in results), sum(r.disagreements for r in results),
                  sum(r.near_ties for r in results), results[0].tolerance)


def compare_outputs(name, train_out, deploy_out, tolerance=DEFAULT_TOLERANCE):
    """``compare`` each output of two structured outputs (``named_outputs``), combined."""
    return compare_named(name, named_outputs(train_out), named_outputs(deploy_out), tolerance)


def compare_named(name, a, b, tolerance=DEFAULT_TOLERANCE):
    """``compare_outputs`` on outputs already listed by ``named_outputs``."""
    if [k for k, _ in a] != [k for k, _ in b]:
        raise ValueError("%s: the outputs differ in structure: %s vs %s"
                         % (name, [k for k, _ in a], [k for k, _ in b]))
    return combine(name, [compare("%s %s" % (name, k), x, y, tolerance)
                          for (k, x), (_, y) in zip(a, b)])


def check_parity(name, train_model, inputs, tolerance=DEFAULT_TOLERANCE):
    """Run ``train_model`` and its deploy-form copy in eval mode on ``inputs`` and compare.

    ``train_model`` is any module: a classifier, a backbone, or a user's model with RepVGG
    blocks anywhere inside (``convert_to_deploy`` fuses them all); its output may be one tensor
    or a list / tuple / dict of them, each compared (relative to its own largest value).
    Returns ``(Parity, deploy_model)``; ``train_model`` is left unchanged.
    """
    train_model.eval()
    x = mge.tensor(inputs)
    train_out = named_outputs(train_model(x))
    deploy_model = convert_to_deploy(train_model)
    deploy_model.eval()
    return compare_named(name, train_out, named_outputs(deploy_model(x)), tolerance), \
        deploy_model


def format_row(p):
    return "%-34s max|d| %.3e  rel %.3e  top-1 %5.1f%%  %s" % (
        p.name, p.max_abs, p.max_rel, 100 * p.top1_agree, "ok" if p.ok else "FAIL")
