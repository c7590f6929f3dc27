"""Exponential moving average (EMA) of a model's weights AND its BatchNorm statistics.

``ModelEma(model, decay)`` keeps ``module``, an eval-mode deep copy of the model; each
``update(model)`` sets, for every parameter and every buffer (BN running mean and variance)::

    ema = ema * decay + model * (1 - decay)        (float32; integer buffers are copied)

which is timm's ``ModelEmaV2`` and, with ``decay = 1 - alpha``, the official RepVGG
``utils.update_model_ema`` (taken from pycls): that one averages every entry of
``state_dict()``, buffers included. Its schedule is ``OfficialEmaSchedule``: an update only every
``TRAIN.EMA_UPDATE_PERIOD`` (default 8) iterations of an epoch (iteration % period == 0),
``alpha = min(1, TRAIN.EMA_ALPHA * total_batch_size / TRAIN.EPOCHS * period)``, and
``alpha = 1`` (a plain copy of the model) during the ``TRAIN.WARMUP_EPOCHS``. The official
default ``EMA_ALPHA = 0`` leaves EMA off; pycls, where the code comes from, uses 1e-5.

``state_dict()`` / ``load_state_dict()`` move the averaged values as numpy arrays, exactly, so
a resumed run continues bit for bit.
"""
import copy

import megengine as mge
import numpy as np


class OfficialEmaSchedule:
    """``decay(epoch, iteration)`` of the official update rule, or None when the official code
    skips the update at that iteration (``iteration`` counts from 0 within each epoch)."""

    def __init__(self, ema_alpha, total_batch_size, epochs, update_period=8, warmup_epochs=5):
        self.ema_alpha, self.total_batch_size = float(ema_alpha), int(total_batch_size)
        self.epochs, self.update_period = int(epochs), int(update_period or 0)
        self.warmup_epochs = warmup_epochs

    def alpha(self, epoch):
        if epoch < self.warmup_epochs:
            return 1.0
        adjust = self.total_batch_size / self.epochs * self.update_period
        return min(1.0, self.ema_alpha * adjust)

    def decay(self, epoch, iteration):
        if self.update_period == 0 or iteration % self.update_period != 0:
            return None
        return 1.0 - self.alpha(epoch)


def _entries(module):
    """name -> tensor for every parameter and buffer, in a fixed order."""
    entries = dict(module.named_parameters())
    entries.update(module.named_buffers())
    return entries


class ModelEma:
    def __init__(self, model, decay=0.9998):
        self.decay = float(decay)
        self.module = copy.deepcopy(model)
        self.module.eval()
        self._ema = _entries(self.module)

    def update(self, model, decay=None):
        """Average ``model`` into the EMA with ``decay`` (default: the constructor's)."""
        decay = self.decay if decay is None else float(decay)
        current = _entries(model)
        if current.keys() != self._ema.keys():
            raise ValueError("the model's parameters/buffers differ from the EMA's: %s"
                             % sorted(set(current) ^ set(self._ema))[:5])
        keep, take = np.float32(decay), np.float32(1.0 - decay)
        for name, ema in self._ema.items():
            value = current[name]
            if tuple(value.shape) != tuple(ema.shape):
                raise ValueError("the model's %s has shape %s, the EMA's %s"
                                 % (name, tuple(value.shape), tuple(ema.shape)))
            if np.issubdtype(np.dtype(ema.dtype), np.floating):
                value = ema * mge.tensor(keep) + value * mge.tensor(take)
            ema._reset(value.detach())

    def state_dict(self):
        """name -> numpy copy of every averaged parameter and buffer, in the layout of
        ``Module.state_dict()`` (so it also loads into a plain model as its weights)."""
        return {name: value.copy() for name, value in self.module.state_dict().items()}

    def load_state_dict(self, state):
        """Restore values written by ``state_dict`` (names and shapes must match exactly)."""
        expected = self.module.state_dict()
        missing, unexpected = set(expected) - set(state), set(state) - set(expected)
        if missing or unexpected:
            raise ValueError("EMA state does not fit the model: missing %s, unexpected %s"
                             % (sorted(missing)[:5], sorted(unexpected)[:5]))
        for name, value in expected.items():
            if np.shape(state[name]) != value.shape:
                raise ValueError("EMA state %s has shape %s, the model %s"
                                 % (name, np.shape(state[name]), value.shape))
        self.module.load_state_dict({k: np.array(v, dtype=expected[k].dtype) for k, v in state.items()})
