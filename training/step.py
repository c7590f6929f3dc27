"""One training step as a unit: forward, loss, backward, optimizer step, per-step module hooks.

    step = TrainStep(model, optimizer, classification_loss(0.1), gm)
    loss, logits = step(images, targets)      # NumPy in; float and NumPy out

``targets`` are int labels (N,) or soft targets (N, C) (mixup/cutmix); the model may return a
dict (RepVGGplus in train form: ``"main"`` plus auxiliary heads). Distributed training passes a
``GradManager`` whose callbacks all-reduce the gradients.

``traced=True`` runs the whole step as one MegEngine graph (``megengine.jit.trace``,
``symbolic=True``), one graph per input shape; learning-rate changes between steps
(``set_lr``) reach the graph. It gives the same weights as the eager step (tested); on the CPU
it measured no faster, because MegEngine's eager runtime already overlaps Python's dispatch
with the kernels, which dominate (see README, "Speed on CPU"). A step whose loss is not finite
leaves the weights untouched in eager mode; a traced step has already applied it.
"""
import math

import megengine as mge
import megengine.functional as F
from megengine.autodiff import GradManager
from megengine.jit import trace

from .hooks import after_optimizer_step
from .losses import soft_target_cross_entropy


def cross_entropy(logits, targets, label_smoothing=0.0):
    """Mean cross-entropy of int labels (N,) or soft targets (N, C); label smoothing mixes the
    targets with the uniform distribution: ``(1 - eps) * t + eps / C``."""
    if targets.ndim == 1:
        return F.nn.cross_entropy(logits, targets, label_smooth=label_smoothing)
    if label_smoothing:
        targets = targets * (1 - label_smoothing) + label_smoothing / logits.shape[1]
    return soft_target_cross_entropy(logits, targets)


def classification_loss(label_smoothing=0.0, aux_weight=0.1, extra=None):
    """``loss_fn(outputs, targets) -> (loss, main logits)``: cross-entropy of the main logits,
    plus ``aux_weight`` times each auxiliary head's (dict outputs, as the official RepVGGplus
    training does), plus ``extra()`` when given (e.g. the custom L2 term)."""
    def loss_fn(outputs, targets):
        def ce(out):
            return cross_entropy(out, targets, label_smoothing)
        if isinstance(outputs, dict):
            logits = outputs["main"]
            loss = ce(logits) + aux_weight * sum(ce(v) for k, v in outputs.items()
                                                 if k != "main")
        else:
            logits = outputs
            loss = ce(logits)
        if extra is not None:
            loss = loss + extra()
        return loss, logits
    return loss_fn


class TrainStep:
    """``step(images, targets) -> (loss, logits)``: one SGD step of ``model`` (see module doc)."""

    def __init__(self, model, optimizer, loss_fn, gm=None, traced=False):
        self.model, self.optimizer, self.loss_fn = model, optimizer, loss_fn
        self.gm = gm if gm is not None else GradManager().attach(model.parameters())
        self.traced = traced
        self._graphs = {}  # (shapes, dtypes) -> traced step

    def _forward_backward(self, images, targets):
        with self.gm:
            loss, logits = self.loss_fn(self.model(images), targets)
            self.gm.backward(loss)
        return loss, logits

    def _update(self):
        self.optimizer.step().clear_grad()
        after_optimizer_step(self.model)

    def _whole_step(self, images, targets):
        loss, logits = self._forward_backward(images, targets)
        self._update()
        return loss, logits

    def _graph(self, images, targets):
        # Static shapes: fastconv plans its routes from them; a new shape gets its own graph.
        key = (images.shape, str(images.dtype), targets.shape, str(targets.dtype))
        if key not in self._graphs:
            self._graphs[key] = trace(self._whole_step, symbolic=True, symbolic_shape=False)
        return self._graphs[key]

    def __call__(self, images, targets):
        images, targets = mge.tensor(images), mge.tensor(targets)
        if self.traced:
            loss, logits = self._graph(images, targets)(images, targets)
            return float(loss.numpy()), logits.numpy()
        loss, logits = self._forward_backward(images, targets)
        value = float(loss.numpy())
        if math.isfinite(value):
            self._update()
        else:
            self.optimizer.clear_grad()
        return value, logits.numpy()
