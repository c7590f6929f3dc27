"""Binary ResNet-18 variants: registry names, a few SGD steps on the built-in digits with the
loss going down and latent weights kept in [-1, 1], and operation counts against hand counts."""
import numpy as np
import pytest

import megengine as mge
import megengine.functional as F
import megengine.module as M
import megengine.optimizer as optim
from megengine.autodiff import GradManager

import model
from model.opcount import count_ops
from data.digits import load_digits
from model.binary.config import BinaryConvConfig
from model.binary.conv import BinaryConv2d
from model.layers import GlobalAvgPool

VARIANTS = ["BinaryResNet18-awnas", "BinaryResNet18-bmxnet"]


def after_optimizer_step(net):  # what training.hooks.after_optimizer_step does
    for m in net.modules():
        if hasattr(m, "after_optimizer_step"):
            m.after_optimizer_step()


@pytest.fixture(scope="module")
def digits_batch():
    train, _, _ = load_digits(image_size=16)
    x = (train.images[:16].astype(np.float32) / 255 - 0.5) / 0.5
    return mge.tensor(x.transpose(0, 3, 1, 2)), mge.tensor(train.labels[:16])


@pytest.mark.parametrize("name", VARIANTS)
def test_trains_a_few_sgd_steps(name, digits_batch):
    x, y = digits_batch
    mge.random.seed(0)
    net = model.get_model(name, num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, BinaryConv2d)]
    # the 16 binary 3x3 convs of a ResNet-18 body; in aw_nas style the 3 reducing ones are
    # factorized into two halves each
    assert len(convs) == (19 if name.endswith("awnas") else 16)
    opt = optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    gm = GradManager().attach(net.parameters())
    losses = []
    for _ in range(5):
        with gm:
            loss = F.loss.cross_entropy(net(x), y)
            gm.backward(loss)
        opt.step()
        opt.clear_grad()
        after_optimizer_step(net)
        losses.append(float(loss.numpy()))
    assert np.isfinite(losses).all()
    assert min(losses[-2:]) < 0.75 * losses[0], losses
    assert all(np.abs(c.weight.numpy()).max() <= 1.0 for c in convs)
    for conv in convs:  # push latent weights out of range: the hook walk must reach them all
        conv.weight[...] = conv.weight * 100
    after_optimizer_step(net)
    for conv in convs:
        w = conv.weight.numpy()
        assert np.abs(w).max() == 1.0 and (np.abs(w) < 1).any()
    net.eval()
    assert np.isfinite(net(x).numpy()).all()


def test_registered_and_configurable():
    assert set(VARIANTS) <= set(model.list_models())
    net = model.get_model("BinaryResNet18-awnas", num_classes=7, body="bmxnet")
    assert net.linear.out_features == 7 and net.relu_before_pool
    with pytest.raises(ValueError, match="stem"):
        model.get_model("BinaryResNet18-awnas", stem="vgg")


def test_op_counts_of_a_small_net_by_hand():
    net = M.Sequential(
        M.Conv2d(3, 4, 3, padding=1),                                       # FP
        BinaryConv2d(4, 8, 3, stride=2, padding=1),                         # binary x binary
        BinaryConv2d(8, 8, 1, config=BinaryConvConfig(act_mode="float")),   # float input: FLOPs
        GlobalAvgPool(), M.Linear(8, 10))
    r = count_ops(net, (1, 3, 8, 8))
    flops = 8 * 8 * 4 * 3 * 9 + 4 * 4 * 8 * 8 + 8 * 10
    bops = 4 * 4 * 8 * 4 * 9
    assert (r["flops"], r["bops"]) == (flops, bops)
    assert r["ops"] == flops + bops / 64


def resnet18_hand_counts(stem, size, classes):
    s = size // 4  # both stems reduce by 4
    body = 4 * s * s * 64 * 64 * 9
    for i, c in enumerate((128, 256, 512)):
        h = s // 2 ** (i + 1)
        body += h * h * c * (c // 2) * 9 + 3 * h * h * c * c * 9
    shortcuts = sum((s // 2 ** (i + 1)) ** 2 * c * (c // 2) for i, c in
                    enumerate((128, 256, 512)))
    half = size // 2
    stem_flops = (half * half * 64 * 3 * 9 + s * s * 64 * 64 * 9 if stem == "awnas"
                  else half * half * 64 * 3 * 49)
    return stem_flops + shortcuts + 512 * classes, body


@pytest.mark.parametrize("stem", ["awnas", "bmxnet"])
def test_resnet18_op_counts_by_hand(stem):
    net = model.get_model("BinaryResNet18-" + stem, num_classes=10)
    r = count_ops(net, (1, 3, 64, 64))
    assert (r["flops"], r["bops"]) == resnet18_hand_counts(stem, 64, 10)
