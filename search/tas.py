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
``train.py --arch`` trains. After every epoch the whole search state (network, attentions, both
optimisers, the sampling generator, the history) is written to ``latest.pkl``, atomically; a
killed search resumes from it (``resume``) and ends where an uninterrupted one would.

This module is the search (config, checks, the bilevel loop, writing the run); the network and
its FLOP accounting are ``search/tas_net.py``.
"""
import dataclasses
import logging
import os

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.optimizer as optim
from megengine.autodiff import GradManager

from common.atomic import write_json
from common import cli
from common.checkpoint import load_checkpoint, save_checkpoint, to_numpy
from common.flags import like, setting
from errors import UserError
from training.schedule import cosine

from .space import from_dict
from .tas_net import TASNet, arch_from_widths, expected_flops, flop_loss, get_flop
from .trainer import SearchConfig, batches, normalize, split_indices

TAS_FORMAT = "repvgg-tas-run/2"
log = logging.getLogger(__name__)


def tau_at(epoch, epochs, tau_max, tau_min):
    return cosine(epoch / epochs, tau_max, tau_min)


@dataclasses.dataclass
class TASConfig:
    """The TAS search's settings; each field is a ``search.py tas`` flag (``common.flags``),
    those it shares with the FBNet search as ``SearchConfig`` declares them."""
    epochs: int = like(SearchConfig, "epochs", 4)
    batch_size: int = like(SearchConfig, "batch_size", 64)
    w_fraction: float = like(SearchConfig, "w_fraction", 0.5)
    w_lr: float = like(SearchConfig, "w_lr", 0.1)
    arch_lr: float = setting(1e-3, "Adam learning rate of the width attentions",
                             type=cli.number(above=0))
    arch_wd: float = setting(1e-3, "Adam weight decay of the attentions", type=cli.number(min=0))
    flop_ratio: float = setting(0.5, "target FLOPs as a fraction of the full-width network's",
                                type=cli.number(above=0, max=1))
    flop_weight: float = setting(2.0, "weight of the FLOP loss in the attentions' loss",
                                 type=cli.number(min=0))
    flop_tolerance: float = setting(0.05, "no FLOP loss within this fraction of the full FLOPs "
                                    "below the target", type=cli.number(min=0, max=1))
    tau_max: float = setting(5.0, "initial temperature", type=cli.number(above=0))
    tau_min: float = setting(0.1, "final temperature (cosine)", type=cli.number(above=0))
    max_steps: int = like(SearchConfig, "max_steps", 0)
    seed: int = like(SearchConfig, "seed", 0)


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


def search_widths(searcher, out, progress=True):
    """Run ``searcher`` (a ``TASSearch``, new or resumed) to its last epoch, checkpointing into
    ``out``, then write OUT/arch.json; returns a summary dict (widths, MMACs of the found, the
    full and the target network, the arch.json path)."""
    searcher.run(out, progress=progress)
    cfg = searcher.cfg
    widths = searcher.net.widths(searcher.net.argmax())
    arch = arch_from_widths(searcher.space, widths, get_flop(searcher.net, "genotype"))
    path = write_json(arch, os.path.join(out, "arch.json"))
    full = get_flop(searcher.net, "max")
    return {"widths": widths, "mmacs": arch["estimated_mmacs"], "full_mmacs": full,
            "target_mmacs": cfg.flop_ratio * full, "arch_path": path}


def load_run(path):
    """A TAS run's latest.pkl, checked; returns (state dict, its search space)."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != TAS_FORMAT:
        raise UserError("%s is not a resumable TAS checkpoint (format %r expected)"
                        % (path, TAS_FORMAT))
    return state, from_dict(state["space"])


def resume(state, space, train, val):
    """The ``TASSearch`` saved in ``state`` (``load_run``), ready to continue."""
    searcher = TASSearch(space, train, val, TASConfig(**state["config"]))
    return searcher.load_state_dict(state)


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
        self.epoch = 0

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

    def run(self, out=None, until_epoch=None, progress=True):
        """Search from the current epoch up to ``until_epoch`` (default: all), writing
        OUT/latest.pkl after every epoch when ``out`` is given."""
        from common.progress import progress as bar

        cfg = self.cfg
        end = cfg.epochs if until_epoch is None else min(until_epoch, cfg.epochs)
        while self.epoch < end:
            e = self.epoch
            tau = tau_at(e, cfg.epochs, cfg.tau_max, cfg.tau_min)
            for g in self.opt_w.param_groups:
                g["lr"] = cosine(e / cfg.epochs, cfg.w_lr, 0.0)
            w_steps = batches(self.rng, self.w_idx, cfg.batch_size, cfg.max_steps)
            a_steps = batches(self.rng, self.a_idx, cfg.batch_size, cfg.max_steps)
            ce_w = [self.step(i, tau, False) for i in bar(w_steps, desc="tas %d weights" % e,
                                                         leave=False, enabled=progress)]
            ce_a = [self.step(i, tau, True) for i in bar(a_steps, desc="tas %d widths" % e,
                                                        leave=False, enabled=progress)]
            row = {"epoch": e, "tau": tau, "w_ce": float(np.mean(ce_w)),
                   "arch_ce": float(np.mean(ce_a)), "val_acc": self.validate(),
                   "widths": self.net.widths(self.net.argmax()),
                   "mmacs": get_flop(self.net, "genotype"),
                   "expected_mmacs": float(expected_flops(self.net).numpy())}
            self.history.append(row)
            self.epoch += 1
            log.info("tas epoch %d: ce %.4f / %.4f, val acc %.4f, widths %s, %.2f MMACs "
                     "(expected %.2f)", e, row["w_ce"], row["arch_ce"], row["val_acc"],
                     row["widths"], row["mmacs"], row["expected_mmacs"])
            if out:
                save_checkpoint(self.state_dict(), os.path.join(out, "latest.pkl"))
        return self.history

    def state_dict(self):
        return {"format": TAS_FORMAT, "space": self.space.to_dict(),
                "config": dataclasses.asdict(self.cfg), "epoch": self.epoch,
                "history": self.history, "state_dict": to_numpy(self.net.state_dict()),
                "opt_w": to_numpy(self.opt_w.state_dict()),
                "opt_a": to_numpy(self.opt_a.state_dict()),
                "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["state_dict"], strict=True)
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_a.load_state_dict(state["opt_a"])
        self.rng.bit_generator.state = state["rng"]
        self.epoch, self.history = int(state["epoch"]), list(state["history"])
        return self
