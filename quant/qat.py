"""Quantization-aware fine-tuning of a trained RepVGG, the official recipe's way.

The official RepVGG quantization code fine-tunes the *deploy* form, with a BatchNorm inserted
again after every fused conv so that training is stable. Here that network is
``quant.network.chain_with_bn`` (eval-mode output equal to the float model's at the start), made
quantization-aware by ``megengine.quantization.quantize_qat``: MegEngine's QAT ``ConvBnRelu2d``
folds the BN into the conv weights, fake-quantizes the folded weights (int8, per tensor) and the
ReLU output (int8, EMA-observed ranges), and trains through the rounding with straight-through
gradients. Observers start from a calibration pass over the calibration images. Afterwards
``quant.ptq.to_int8`` converts the chain (BN folded for good) to the int8 network, and
``quant.network.folded_layers`` gives its float weights for other runtimes.

Optimiser and schedule are the training package's: SGD with the official parameter groups
(``training.optimizer``), cosine decay (``training.schedule``).
"""
import logging
import math

import numpy as np

import megengine as mge
import megengine.functional as F
import megengine.quantization as Q
from megengine.autodiff import GradManager

from common.progress import progress as progress_display
from errors import UserError

from . import network, ptq

log = logging.getLogger(__name__)


def prepare(layers, linear, calib_batches, observer="ema"):
    """The QAT chain, BN statistics and observer ranges initialised from ``calib_batches``."""
    chain = network.chain_with_bn(layers, linear, calib_batches)
    Q.quantize_qat(chain, inplace=True, qconfig=ptq.qconfig(observer, fake_quant=True))
    chain.eval()
    Q.disable_fake_quant(chain)
    Q.enable_observer(chain)
    for batch in calib_batches:
        chain(mge.tensor(batch))
    Q.enable_fake_quant(chain)
    return chain


def accuracy(chain, batches, labels):
    chain.eval()
    out = np.concatenate([chain(mge.tensor(b)).numpy() for b in batches])
    return float(np.mean(out.argmax(1) == labels))


def finetune(chain, loader, steps_per_epoch, epochs, lr, weight_decay=1e-4, momentum=0.9,
             check=None, progress=True):
    """Train the QAT ``chain`` in place on ``loader`` (``data.loader.make_loader`` output:
    (loader, sampler)); ``check`` = (batches, labels) is evaluated after every epoch. Returns
    the per-epoch (train loss, check top-1) history."""
    from training import fastconv
    from training.optimizer import build_sgd, set_lr
    from training.schedule import lr_at

    loader, sampler = loader
    fastconv.enable(chain)  # faster conv weight gradients on CPU, same values
    optimizer = build_sgd(chain, lr, momentum, weight_decay, bias_lr_mult=1.0)
    gm = GradManager().attach(chain.parameters())
    total = steps_per_epoch * epochs
    history, step = [], 0
    for epoch in range(epochs):
        chain.train()
        Q.enable_observer(chain)  # train() enables them too; explicit for clarity
        sampler.set_epoch(epoch)
        losses = []
        bar = progress_display(total=steps_per_epoch, unit="step", leave=False,
                               desc="qat epoch %d/%d" % (epoch + 1, epochs), enabled=progress)
        for i, (images, labels, _) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            set_lr(optimizer, lr_at(step, lr, total))
            with gm:
                loss = F.nn.cross_entropy(chain(mge.tensor(images)), mge.tensor(labels))
                gm.backward(loss)
            value = float(loss.numpy())
            if not math.isfinite(value):
                raise UserError("QAT loss is %s at step %d; try a lower --lr" % (value, step + 1))
            optimizer.step().clear_grad()
            losses.append(value)
            step += 1
            bar.set_postfix(loss="%.3f" % np.mean(losses), refresh=False)
            bar.update(1)
        bar.close()
        top1 = accuracy(chain, *check) if check is not None else None
        history.append((float(np.mean(losses)), top1))
        log.info("QAT epoch %d/%d: train loss %.4f%s", epoch + 1, epochs, history[-1][0],
                 "" if top1 is None else ", check top-1 (fake-quantized) %.2f%%" % (100 * top1))
    chain.eval()
    Q.disable_observer(chain)
    return history
