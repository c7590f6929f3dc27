"""Training the FBNet supernet: weights by SGD, theta by Adam, on disjoint splits.

One epoch (after ``warmup_epochs`` weight-only epochs): a pass of weight steps over the
weights' split, then a pass of theta steps over theta's split (a disjoint part of the training
data: ``split_indices``), then validation on the held-out validation split — never a test set —
and a checkpoint. The temperature is multiplied by ``tau_decay`` after every epoch that trained
theta; the weights' learning rate follows a cosine over all epochs.

Validation runs the supernet deterministically (no noise) with the mixture
``softmax(theta / tau)``, the function its weights are trained for, and selects ``best.pkl`` by
that accuracy. The argmax architecture alone is validated too and logged (``val_acc_argmax``),
but with soft mixing its ops are trained as parts of a sum, so early in a search that number
says little (with ``--mode hard_st`` or a low tau the two agree).

Both steps minimise the FBNet loss ``alpha * CE * (log LAT)^beta`` (``search.loss``), each
through its own ``GradManager`` (the weights' one is attached to the weights only, theta's to
theta only), so neither step computes the other's gradients.

A checkpoint (``latest.pkl`` every epoch, atomically; ``best.pkl`` when the validation accuracy
improves on an epoch that trained theta) holds everything needed to continue exactly: supernet
weights and theta, both optimizers' states, the epoch, the temperature, the numpy RNG state
(batch order and Gumbel noise), the history, the search space, the latency table and the
configuration.
"""
import dataclasses
import logging
import os
import time

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.optimizer as optim
from megengine.autodiff import GradManager

from common import cli
from common.checkpoint import load_checkpoint, save_checkpoint, to_numpy
from common.flags import setting
from errors import UserError
from training.schedule import cosine

from . import gumbel
from .latency import LatencyTable
from .loss import fbnet_loss
from .space import from_dict
from .supernet import Supernet

log = logging.getLogger(__name__)
CKPT_FORMAT = "repvgg-search-run/1"
POSITIVE, COUNT = cli.integer(min=1), cli.integer(min=0)


@dataclasses.dataclass
class SearchConfig:
    """The search's settings; each field is a ``search.py train`` flag (``common.flags``)."""
    epochs: int = setting(10, "total epochs, warm-up included", type=POSITIVE)
    warmup_epochs: int = setting(2, "first epochs train weights only", type=COUNT)
    batch_size: int = setting(64, "batch size of both phases", type=POSITIVE)
    w_fraction: float = setting(0.8, "share of the training split for the weights; the "
                                "architecture parameters get the rest",
                                type=cli.number(above=0, max=1))
    w_lr: float = setting(0.1, "SGD learning rate of the weights (cosine decay)",
                          type=cli.number(above=0))
    w_momentum: float = setting(0.9, "SGD momentum", type=cli.number(min=0, max=1))
    w_wd: float = setting(1e-4, "SGD weight decay", type=cli.number(min=0))
    theta_lr: float = setting(0.01, "Adam learning rate of theta", type=cli.number(above=0))
    theta_wd: float = setting(5e-4, "Adam weight decay of theta", type=cli.number(min=0))
    alpha: float = setting(0.2, "loss scale alpha", type=cli.number(above=0))
    beta: float = setting(0.6, "latency exponent beta", type=cli.number(min=0))
    loss_form: str = setting("paper", "paper: alpha*CE*(log LAT)^beta; repo: alpha*beta*CE*log "
                             "LAT (the FBNet code's form)", choices=("paper", "repo"))
    tau0: float = setting(5.0, "initial Gumbel temperature", type=cli.number(above=0))
    tau_decay: float = setting(0.956, "temperature factor after every epoch that trains theta",
                               type=cli.number(above=0, max=1))
    noise: str = setting("per_sample", "one Gumbel sample per example, or one per batch (FBNet "
                         "code)", choices=("per_sample", "per_batch"))
    mode: str = setting("soft", "soft mixing, or one-hot forward with soft (straight-through) "
                        "gradient", choices=("soft", "hard_st"))
    seed: int = setting(0, "seed of splits, init, batches and sampling", type=COUNT)
    max_steps: int = setting(0, "at most this many steps per phase and epoch (0 = full passes)",
                             type=COUNT)

    def check(self):
        if not 0 < self.w_fraction < 1:
            raise UserError("--w-fraction must be in (0, 1), got %g" % self.w_fraction)
        if self.warmup_epochs > self.epochs or self.epochs < 1:
            raise UserError("need 1 <= epochs and warmup epochs <= epochs (%d, %d)"
                            % (self.epochs, self.warmup_epochs))
        if self.tau0 <= 0 or not 0 < self.tau_decay <= 1:
            raise UserError("need tau0 > 0 and 0 < tau decay <= 1")
        return self


def split_indices(n, w_fraction, seed):
    """Disjoint index sets for the weights and for theta whose union is range(n)."""
    perm = np.random.default_rng(seed).permutation(n)
    cut = int(round(n * w_fraction))
    if cut < 1 or cut >= n:
        raise UserError("a weights fraction of %g leaves one split empty (n = %d)"
                        % (w_fraction, n))
    return np.sort(perm[:cut]), np.sort(perm[cut:])


def batches(rng, indices, batch_size, max_steps=0):
    order = rng.permutation(indices)
    out = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    return out[:max_steps] if max_steps else out


def normalize(images):
    """uint8 NHWC -> float32 NCHW in [-1, 1]."""
    x = images.astype(np.float32) / 255.0
    return np.ascontiguousarray(((x - 0.5) / 0.5).transpose(0, 3, 1, 2))


class Searcher:
    """The supernet, its two optimizers and the search state; ``run`` trains epochs."""

    def __init__(self, space, lut, train, val, config, out_dir=None):
        self.space, self.lut, self.config = space, lut, config.check()
        self.train_x, self.train_y = normalize(train.images), train.labels.astype(np.int32)
        self.val_x, self.val_y = normalize(val.images), val.labels.astype(np.int32)
        self.w_idx, self.t_idx = split_indices(len(self.train_y), config.w_fraction, config.seed)
        self.out_dir = out_dir
        mge.random.seed(config.seed)  # weight initialisation
        self.model = Supernet(space, lut)
        weights = self.model.weight_parameters()
        self.opt_w = optim.SGD(weights, lr=config.w_lr, momentum=config.w_momentum,
                               weight_decay=config.w_wd)
        self.opt_t = optim.Adam([self.model.theta], lr=config.theta_lr,
                                weight_decay=config.theta_wd)
        self.gm_w = GradManager().attach(weights)
        self.gm_t = GradManager().attach([self.model.theta])
        self.rng = np.random.default_rng(config.seed)
        self.epoch, self.tau, self.history, self.best_acc = 0, config.tau0, [], None
        self.best_loss = None  # theta's loss at the best epoch: the tie-break
        self.data = None       # the --data folder (None: the built-in digits), recorded

    # --- one step -------------------------------------------------------------------------
    def _step(self, idx, gm, opt, theta):
        cfg, L, K = self.config, len(self.space.layers), len(self.space.candidates)
        x, y = mge.tensor(self.train_x[idx]), mge.tensor(self.train_y[idx])
        noise = gumbel.noise_for_batch(self.rng, len(idx), L, K, cfg.noise)
        with gm:
            m = gumbel.gumbel_softmax(theta[:, None, :], noise, self.tau, cfg.mode)
            logits, lat = self.model(x, m)
            ce = F.loss.cross_entropy(logits, y)
            loss = fbnet_loss(ce, lat, cfg.alpha, cfg.beta, cfg.loss_form)
            gm.backward(loss)
        opt.step()
        opt.clear_grad()
        return float(loss.numpy()), float(ce.numpy()), float(lat.numpy())

    def _phase(self, indices, gm, opt, theta, desc, progress):
        from common.progress import progress as progress_display

        steps = batches(self.rng, indices, self.config.batch_size, self.config.max_steps)
        sums = np.zeros(3)
        bar = progress_display(steps, desc=desc, unit="step", leave=False, enabled=progress)
        for idx in bar:
            sums += self._step(idx, gm, opt, theta)
            bar.set_postfix(loss="%.3f" % sums[0])
        return sums / max(len(steps), 1)

    def lr_at(self, epoch):
        return cosine(epoch / self.config.epochs, self.config.w_lr, 0.0)

    def choices(self):
        return np.argmax(self.model.theta.numpy(), axis=1)

    def validate(self, path="mixture", batch_size=256):
        """Top-1 accuracy on the validation split (eval mode, no noise), of the supernet with
        the deterministic mixture ``softmax(theta / tau)`` (``path="mixture"``), or of the argmax
        architecture alone (``path="argmax"``)."""
        self.model.eval()
        choices, correct = self.choices(), 0
        L, K = self.model.theta.shape
        for i in range(0, len(self.val_y), batch_size):
            x = mge.tensor(self.val_x[i:i + batch_size])
            if path == "argmax":
                logits = self.model.forward_choice(x, choices)
            else:
                m = F.softmax(self.model.theta.detach() / self.tau, axis=-1)
                logits, _ = self.model(x, F.broadcast_to(m[:, None, :], (L, x.shape[0], K)))
            correct += int((logits.numpy().argmax(1) == self.val_y[i:i + batch_size]).sum())
        self.model.train()
        return correct / len(self.val_y)

    # --- epochs ---------------------------------------------------------------------------
    def train_epoch(self, progress=True):
        cfg, e, start = self.config, self.epoch, time.perf_counter()
        trains_theta = e >= cfg.warmup_epochs
        for group in self.opt_w.param_groups:
            group["lr"] = self.lr_at(e)
        self.model.train()
        w = self._phase(self.w_idx, self.gm_w, self.opt_w, self.model.theta.detach(),
                        "epoch %d weights" % e, progress)
        t = (self._phase(self.t_idx, self.gm_t, self.opt_t, self.model.theta,
                         "epoch %d theta" % e, progress) if trains_theta else [float("nan")] * 3)
        acc, acc_argmax = self.validate("mixture"), self.validate("argmax")
        row = {"epoch": e, "tau": self.tau, "lr": self.lr_at(e), "w_loss": w[0], "w_ce": w[1],
               "theta_loss": t[0], "theta_ce": t[1], "sampled_latency": w[2],
               "expected_latency": float(self.model.expected_latency_per_layer().sum()
                                         + self.model.fixed_latency),
               "val_acc": acc, "val_acc_argmax": acc_argmax,
               "arch": [self.space.candidates[k] for k in self.choices()],
               "seconds": time.perf_counter() - start, "trained_theta": trains_theta}
        self.history.append(row)
        log.info("epoch %d: w loss %.4f ce %.4f | theta loss %s | E[lat] %.1f %s | val acc "
                 "%.4f (argmax path %.4f) | tau %.3f | %.1f s", e, w[0], w[1],
                 "%.4f" % t[0] if trains_theta else "- (warm-up)", row["expected_latency"],
                 self.lut.unit, acc, acc_argmax, self.tau, row["seconds"])
        if trains_theta:
            self.tau *= cfg.tau_decay
        self.epoch += 1
        improved = trains_theta and self._beats_best(acc, t[0])
        if improved:
            self.best_acc, self.best_loss = acc, t[0]
        if self.out_dir:
            ckpt = self.state_dict()
            save_checkpoint(ckpt, os.path.join(self.out_dir, "latest.pkl"))
            if improved or (self.epoch == cfg.epochs and self.best_acc is None):
                save_checkpoint(ckpt, os.path.join(self.out_dir, "best.pkl"))
        return row

    def _beats_best(self, acc, theta_loss):
        """Better validation accuracy; on a tie, a lower theta loss (the searched objective):
        with few validation images ties are common, and the earliest tied epoch has the least
        trained theta. Warm-up epochs (theta untrained) never become best."""
        if self.best_acc is None or acc > self.best_acc:
            return True
        return acc == self.best_acc and (self.best_loss is None or theta_loss < self.best_loss)

    def run(self, until_epoch=None, progress=True):
        """Train up to ``until_epoch`` (default: all configured epochs) from the current one."""
        end = self.config.epochs if until_epoch is None else min(until_epoch, self.config.epochs)
        while self.epoch < end:
            self.train_epoch(progress)
        return self.history

    # --- state ----------------------------------------------------------------------------
    def state_dict(self):
        return {"format": CKPT_FORMAT, "space": self.space.to_dict(),
                "space_hash": self.space.hash, "lut": self.lut.to_dict(),
                "config": dataclasses.asdict(self.config),
                "supernet": to_numpy(self.model.state_dict()),
                "opt_w": to_numpy(self.opt_w.state_dict()),
                "opt_t": to_numpy(self.opt_t.state_dict()),
                "epoch": self.epoch, "tau": self.tau, "rng": self.rng.bit_generator.state,
                "history": self.history, "best_acc": self.best_acc,
                "best_loss": self.best_loss, "data": self.data}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["supernet"], strict=True)
        self.opt_w.load_state_dict(state["opt_w"])
        self.opt_t.load_state_dict(state["opt_t"])
        self.epoch, self.tau = int(state["epoch"]), float(state["tau"])
        self.rng.bit_generator.state = state["rng"]
        self.history, self.best_acc = list(state["history"]), state["best_acc"]
        self.best_loss, self.data = state.get("best_loss"), state.get("data")  # older runs: none
        return self


def load_run(path):
    """A search checkpoint (``latest.pkl``/``best.pkl``), checked; returns the dict."""
    state = load_checkpoint(path)
    if not isinstance(state, dict) or state.get("format") != CKPT_FORMAT:
        raise UserError("%s is not a search checkpoint (format %r expected)" % (path, CKPT_FORMAT))
    space = from_dict(state["space"])
    if space.hash != state["space_hash"]:
        raise UserError("%s: its search space does not match its recorded hash" % path)
    LatencyTable.from_dict(state["lut"], what=path).check(space, what="%s's table" % path)
    return state


def resume(path, train, val, out_dir, epochs=None):
    """Rebuild a Searcher from a checkpoint; ``epochs`` may extend the run."""
    state = load_run(path)
    space = from_dict(state["space"])
    lut = LatencyTable.from_dict(state["lut"])
    config = SearchConfig(**state["config"])
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    searcher = Searcher(space, lut, train, val, config, out_dir)
    return searcher.load_state_dict(state)
