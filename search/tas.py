"""TAS width search (Dong & Yang, "Network Pruning via Transformable Architecture Search", 2019).

Every searched conv ``l`` has a width attention ``alpha_l`` over its width choices
``int(C * r)`` for ``r`` in 0.3, 0.4, ..., 1.0 (deduplicated; the attention has exactly as many
entries as there are choices, also for small C, where the reference code's fixed 8 columns no
longer match). One step:

- ``select2``: Gumbel-perturb ``log_softmax(alpha) / tau``, draw two distinct widths from it, and
  weight them by the softmax of their two perturbed logits (the gradient reaches alpha through
  those weights);
- the conv runs at full width; its output is cut to the two widths, each gets its own BN and
  ReLU, both are aligned to the larger width by ``channel_interp`` (channel-wise adaptive
  average pooling) and mixed with the two weights;
- the expected FLOPs use ``E[C_out] = sum_j softmax(alpha)_j C_j`` per conv, chained through the
  layers (``E[C_in]`` of a conv is the previous conv's ``E[C_out]``): ``k^2 H_out W_out E[C_in]
  E[C_out]`` plus the classifier's ``E[C_last] * classes`` (MACs; the stem is not searched and
  counts its fixed MACs);
- FLOP loss: with ``F`` the argmax network's FLOPs, target ``ratio * F_max`` and tolerance
  ``tol * F_max``: ``-log E[FLOPs]`` if ``F < target - tol`` (grow), ``+log E[FLOPs]`` if ``F >
  target`` (shrink), else 0 — TAS's rule, which has no tolerance above the target.

Weights train by SGD on one half of the training data, the attentions by Adam on the other
(``CE + flop_weight * flop_loss``); tau follows TAS's cosine from ``tau_max`` to ``tau_min``. The
argmax widths become an ``arch.json`` of ``conv_k3`` layers (``model.derived``) that
``train.py --arch`` trains.
"""
import dataclasses
import logging
import os

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager

from common.checkpoint import save_checkpoint, to_numpy
from errors import UserError
from model.derived import ARCH_FORMAT, build_stem
from training.schedule import cosine

from .gumbel import gumbel_noise
from .jsonio import write_json
from .space import out_size
from .trainer import batches, normalize, split_indices

RATIOS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
TAS_FORMAT = "repvgg-tas-run/1"
log = logging.getLogger(__name__)


def width_choices(channels, ratios=RATIOS):
    """Sorted distinct widths ``int(channels * r)`` (at least 1)."""
    return sorted({max(1, int(channels * r)) for r in ratios})


def select2(logits, tau, rng):
    """Two distinct choice indices drawn from Gumbel-softmax probabilities, and their weights
    (a tensor of 2 summing to 1, differentiable w.r.t. ``logits``). One choice: (idx, [1])."""
    k = logits.shape[0]
    z = (F.logsoftmax(logits, axis=0) + mge.tensor(gumbel_noise(rng, (k,)))) / tau
    if k == 1:
        return np.array([0]), F.softmax(z, axis=0)
    p = F.softmax(z, axis=0).numpy().astype(np.float64) + 1e-7
    idx = rng.choice(k, size=2, replace=False, p=p / p.sum())
    return idx, F.softmax(z[mge.tensor(idx.astype(np.int32))], axis=0)


def interp_matrix(c_in, c_out):
    """(c_out, c_in) matrix: output channel o averages the inputs from floor(o c_in / c_out)
    up to (excluding) ceil((o + 1) c_in / c_out)."""
    a = np.zeros((c_out, c_in), np.float32)
    for o in range(c_out):
        lo, hi = (o * c_in) // c_out, -((-(o + 1) * c_in) // c_out)
        a[o, lo:hi] = 1.0 / (hi - lo)
    return a


def channel_interp(x, channels):
    """Align (N, C, H, W) to ``channels`` by adaptive average pooling over the channel axis."""
    n, c, h, w = x.shape
    if c == channels:
        return x
    a = mge.tensor(interp_matrix(c, channels))
    y = F.matmul(F.transpose(x, (0, 2, 3, 1)).reshape(-1, c), a, transpose_b=True)
    return F.transpose(y.reshape(n, h, w, channels), (0, 3, 1, 2))


class WidthConv(M.Module):
    """A 3x3 conv searched over its output widths: full conv, one BN per width, mixed output."""

    def __init__(self, C_in, C_out, stride):
        super().__init__()
        self.C_in, self.choices = C_in, width_choices(C_out)
        self.conv = M.Conv2d(C_in, C_out, 3, stride, 1, bias=False)
        self.bns = [M.BatchNorm2d(c) for c in self.choices]

    def forward(self, x, idx, weights):
        if x.shape[1] < self.C_in:  # a narrower input: zero-pad its channels
            n, c, h, w = x.shape
            x = F.concat([x, F.zeros((n, self.C_in - c, h, w))], axis=1)
        y = self.conv(x)
        widths = [self.choices[int(j)] for j in idx]
        outs = [F.relu(self.bns[int(j)](y[:, :c])) for j, c in zip(idx, widths)]
        top = max(widths)
        return sum(weights[i] * channel_interp(o, top) for i, o in enumerate(outs))


class TASNet(M.Module):
    """Fixed stem, searched-width conv layers, global pool, linear on the first C columns."""

    def __init__(self, space, rng):
        super().__init__()
        self.space = space
        self.stem = build_stem(space.stem_dict())
        self.layers = [WidthConv(l.C_in, l.C_out, l.stride) for l in space.layers]
        self.linear = M.Linear(space.layers[-1].C_out, space.num_classes)
        self.attentions = [mge.Parameter(rng.normal(0, 0.01, len(l.choices)).astype(np.float32))
                           for l in self.layers]

    def weight_parameters(self):
        ids = {id(a) for a in self.attentions}
        return [p for p in self.parameters() if id(p) not in ids]

    def classify(self, x):
        c = x.shape[1]
        return F.matmul(F.mean(x, axis=(2, 3)), self.linear.weight[:, :c],
                        transpose_b=True) + self.linear.bias

    def forward(self, x, tau, rng):
        x = self.stem(x)
        for layer, a in zip(self.layers, self.attentions):
            idx, w = select2(a, tau, rng)
            x = layer(x, idx, w)
        return self.classify(x)

    def forward_widths(self, x, indices):
        """The network at fixed width choices (one index per layer)."""
        x = self.stem(x)
        for layer, j in zip(self.layers, indices):
            x = layer(x, [j], [1.0])
        return self.classify(x)

    def argmax(self):
        return [int(np.argmax(a.numpy())) for a in self.attentions]

    def widths(self, indices):
        return [layer.choices[j] for layer, j in zip(self.layers, indices)]


def layer_out_sizes(space):
    return [out_size(l.input_size, l.stride) for l in space.layers]


def stem_macs(space):
    s = out_size(space.image_size, space.stem_stride)
    return 3 * space.stem_channels * 9 * s * s


def flops_of_widths(space, widths):
    """MACs (in millions) of the plain network with these conv widths (floats allowed)."""
    total, c_in = stem_macs(space), space.stem_channels
    for c, s in zip(widths, layer_out_sizes(space)):
        total = total + 9 * s * s * c_in * c
        c_in = c
    return (total + c_in * space.num_classes) / 1e6


def expected_flops(net):
    """E[FLOPs] (MMACs) under softmax(attention) per layer; a differentiable tensor."""
    e_out = [(F.softmax(a, axis=0) * mge.tensor(np.asarray(l.choices, np.float32))).sum()
             for a, l in zip(net.attentions, net.layers)]
    return flops_of_widths(net.space, e_out)


def get_flop(net, mode):
    """'max': all full widths; 'genotype': the argmax widths. MMACs."""
    if mode == "max":
        return flops_of_widths(net.space, [l.choices[-1] for l in net.layers])
    if mode == "genotype":
        return flops_of_widths(net.space, net.widths(net.argmax()))
    raise ValueError("mode must be 'max' or 'genotype', got %r" % mode)


def flop_loss(net, ratio, tolerance=0.05):
    """TAS's FLOP loss (see the module docstring); returns (loss tensor or 0.0, expected)."""
    f_max, f_cur = get_flop(net, "max"), get_flop(net, "genotype")
    target, tol = ratio * f_max, tolerance * f_max
    expected = expected_flops(net)
    if f_cur < target - tol:
        return -F.log(expected), expected
    if f_cur > target:
        return F.log(expected), expected
    return 0.0, expected


def tau_at(epoch, epochs, tau_max, tau_min):
    return cosine(epoch / epochs, tau_max, tau_min)


def arch_from_widths(space, widths, flops=None):
    """The arch.json dict of the pruned plain network."""
    layers, c_in = [], space.stem_channels
    for l, c in zip(space.layers, widths):
        layers.append({"op": "conv_k3", "C_in": c_in, "C_out": int(c), "stride": l.stride,
                       "input_size": l.input_size})
        c_in = int(c)
    arch = {"format": ARCH_FORMAT, "space": space.name, "space_hash": space.hash,
            "search": "tas", "image_size": space.image_size, "num_classes": space.num_classes,
            "stem": space.stem_dict(), "layers": layers, "head": {"channels": 0}}
    if flops is not None:
        arch["estimated_mmacs"] = float(flops)
    return arch


@dataclasses.dataclass
class TASConfig:
    epochs: int = 4
    batch_size: int = 64
    w_fraction: float = 0.5
    w_lr: float = 0.1
    arch_lr: float = 1e-3
    arch_wd: float = 1e-3
    flop_ratio: float = 0.5
    flop_weight: float = 2.0
    flop_tolerance: float = 0.05
    tau_max: float = 5.0
    tau_min: float = 0.1
    max_steps: int = 0
    seed: int = 0


def check_tas(space, cfg):
    """Raise ``UserError`` (one line) unless TAS can search ``space`` with ``cfg``."""
    if any(c != "conv_k3" for c in space.candidates):
        raise UserError("TAS searches widths of conv_k3 layers; space %s has candidates %s "
                        "(use --space tas_digits)" % (space.name, ",".join(space.candidates)))
    if not 0 < cfg.flop_ratio <= 1:
        raise UserError("--flop-ratio must be in (0, 1], got %g" % cfg.flop_ratio)
    if cfg.epochs < 1 or cfg.batch_size < 1 or cfg.max_steps < 0:
        raise UserError("need --epochs >= 1, --batch-size >= 1 and --max-steps >= 0")
    if not 0 < cfg.w_fraction < 1:
        raise UserError("--w-fraction must be in (0, 1), got %g" % cfg.w_fraction)
    if not 0 < cfg.tau_min <= cfg.tau_max:
        raise UserError("need 0 < --tau-min <= --tau-max")


def search_widths(space, train, val, cfg, out, progress=True):
    """Search, then write OUT/arch.json and OUT/latest.pkl; returns a summary dict (widths,
    MMACs of the found, the full and the target network, the arch.json path)."""
    check_tas(space, cfg)
    searcher = TASSearch(space, train, val, cfg)
    searcher.run(progress=progress)
    widths = searcher.net.widths(searcher.net.argmax())
    arch = arch_from_widths(space, widths, get_flop(searcher.net, "genotype"))
    path = write_json(arch, os.path.join(out, "arch.json"))
    save_checkpoint({"format": TAS_FORMAT, "space": space.to_dict(),
                     "config": dataclasses.asdict(cfg), "history": searcher.history,
                     "state_dict": to_numpy(searcher.net.state_dict()),
                     "attentions": [a.numpy() for a in searcher.net.attentions]},
                    os.path.join(out, "latest.pkl"))
    full = get_flop(searcher.net, "max")
    return {"widths": widths, "mmacs": arch["estimated_mmacs"], "full_mmacs": full,
            "target_mmacs": cfg.flop_ratio * full, "arch_path": path}


class TASSearch:
    def __init__(self, space, train, val, cfg):
        self.space, self.cfg = space, cfg
        self.train_x, self.train_y = normalize(train.images), train.labels.astype(np.int32)
        self.val_x, self.val_y = normalize(val.images), val.labels.astype(np.int32)
        self.w_idx, self.a_idx = split_indices(len(self.train_y), cfg.w_fraction, cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        mge.random.seed(cfg.seed)
        self.net = TASNet(space, self.rng)
        weights = self.net.weight_parameters()
        self.opt_w = optim.SGD(weights, lr=cfg.w_lr, momentum=0.9, nesterov=True,
                               weight_decay=5e-4)
        self.opt_a = optim.Adam(self.net.attentions, lr=cfg.arch_lr, betas=(0.5, 0.999),
                                weight_decay=cfg.arch_wd)
        self.gm_w = GradManager().attach(weights)
        self.gm_a = GradManager().attach(self.net.attentions)
        self.history = []

    def step(self, idx, tau, arch):
        x, y = mge.tensor(self.train_x[idx]), mge.tensor(self.train_y[idx])
        gm, opt = (self.gm_a, self.opt_a) if arch else (self.gm_w, self.opt_w)
        with gm:
            ce = F.loss.cross_entropy(self.net(x, tau, self.rng), y)
            loss = ce
            if arch:
                fl, _ = flop_loss(self.net, self.cfg.flop_ratio, self.cfg.flop_tolerance)
                loss = ce + self.cfg.flop_weight * fl
            gm.backward(loss)
        opt.step()
        opt.clear_grad()
        return float(ce.numpy())

    def validate(self):
        self.net.eval()
        idx, correct = self.net.argmax(), 0
        for i in range(0, len(self.val_y), 256):
            out = self.net.forward_widths(mge.tensor(self.val_x[i:i + 256]), idx)
            correct += int((out.numpy().argmax(1) == self.val_y[i:i + 256]).sum())
        self.net.train()
        return correct / len(self.val_y)

    def run(self, progress=True):
        from tqdm import tqdm

        cfg = self.cfg
        for e in range(cfg.epochs):
            tau = tau_at(e, cfg.epochs, cfg.tau_max, cfg.tau_min)
            for g in self.opt_w.param_groups:
                g["lr"] = cosine(e / cfg.epochs, cfg.w_lr, 0.0)
            w_steps = batches(self.rng, self.w_idx, cfg.batch_size, cfg.max_steps)
            a_steps = batches(self.rng, self.a_idx, cfg.batch_size, cfg.max_steps)
            ce_w = [self.step(i, tau, False) for i in tqdm(w_steps, desc="tas %d weights" % e,
                                                          leave=False, disable=not progress)]
            ce_a = [self.step(i, tau, True) for i in tqdm(a_steps, desc="tas %d widths" % e,
                                                         leave=False, disable=not progress)]
            row = {"epoch": e, "tau": tau, "w_ce": float(np.mean(ce_w)),
                   "arch_ce": float(np.mean(ce_a)), "val_acc": self.validate(),
                   "widths": self.net.widths(self.net.argmax()),
                   "mmacs": get_flop(self.net, "genotype"),
                   "expected_mmacs": float(expected_flops(self.net).numpy())}
            self.history.append(row)
            log.info("tas epoch %d: ce %.4f / %.4f, val acc %.4f, widths %s, %.2f MMACs "
                     "(expected %.2f)", e, row["w_ce"], row["arch_ce"], row["val_acc"],
                     row["widths"], row["mmacs"], row["expected_mmacs"])
        return self.history
