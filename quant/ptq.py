"""Post-training quantization with ``megengine.quantization``: observe, then convert to int8.

Weights: symmetric int8 with the narrow range [-127, 127] (MegEngine's ``qint8_narrow``, so a
product of two weights cannot overflow the int16 intermediate), one scale per tensor (the only
kind MegEngine 1.13's quantized dtypes hold; ``quant.equalize`` makes that nearly as good as
per-channel). Activations: symmetric int8, range chosen on calibration images by an observer:

    minmax     the largest |value| seen (no clipping; outliers widen the step)
    histogram  MegEngine's HistogramObserver: a histogram of the values and the clipping range
               that minimizes the L2 quantization error (slower; pure Python per layer)
    ema        exponential moving average of per-batch min/max (MegEngine's QAT default)
"""
import functools

import numpy as np

import megengine as mge
import megengine.quantization as Q

from common.progress import progress as progress_display
from errors import UserError

OBSERVERS = {
    "minmax": Q.MinMaxObserver,
    "histogram": Q.HistogramObserver,
    "ema": Q.ExponentialMovingAverageObserver,
}
DEFAULT_OBSERVER = "minmax"


def qconfig(observer=DEFAULT_OBSERVER, fake_quant=False):
    """A ``QConfig``: per-tensor symmetric int8 weights (MinMax), activations by ``observer``;
    with ``fake_quant`` also the fake-quantize nodes QAT trains through."""
    if observer not in OBSERVERS:
        raise UserError("unknown observer %r; known: %s" % (observer, ", ".join(OBSERVERS)))
    fq = functools.partial(Q.FakeQuantize, dtype="qint8_narrow") if fake_quant else None
    return Q.QConfig(
        weight_observer=functools.partial(Q.MinMaxObserver, dtype="qint8_narrow"),
        act_observer=functools.partial(OBSERVERS[observer], dtype="qint8"),
        weight_fake_quant=fq,
        act_fake_quant=functools.partial(Q.FakeQuantize, dtype="qint8") if fake_quant else None,
    )


def calibrate(chain, batches, observer=DEFAULT_OBSERVER, progress=True):
    """Run ``batches`` (numpy image batches) through the observed ``chain`` (a
    ``quant.network.QuantChain``, converted in place) and return the int8 network."""
    Q.quantize_qat(chain, inplace=True, qconfig=qconfig(observer))
    chain.eval()  # eval() disables observers; enable them after it
    Q.enable_observer(chain)
    seen = 0
    for batch in progress_display(batches, desc="calibrate", unit="batch", leave=False,
                                  enabled=progress):
        chain(mge.tensor(np.asarray(batch, np.float32)))
        seen += len(batch)
    if not seen:
        raise UserError("no calibration images")
    Q.disable_observer(chain)
    return to_int8(chain)


def to_int8(qat_chain):
    """The int8 network of an observed or QAT-trained chain (a copy), in eval mode."""
    int8 = Q.quantize(qat_chain, inplace=False)
    int8.eval()
    return int8
