"""Reference 7.5 item 10: the FBNet loss formula, its repo form, and its gradient's sign."""
import math

import numpy as np
import pytest

import megengine as mge
from megengine.autodiff import GradManager

from search.gumbel import gumbel_softmax
from search.loss import fbnet_loss


@pytest.mark.parametrize("ce,lat,alpha,beta", [(2.3, 66000.0, 0.2, 0.6), (0.7, 150.0, 1.0, 2.0)])
def test_paper_and_repo_forms(ce, lat, alpha, beta):
    t = lambda v: mge.tensor(np.float32(v))  # noqa: E731
    paper = float(fbnet_loss(t(ce), t(lat), alpha, beta, "paper").numpy())
    repo = float(fbnet_loss(t(ce), t(lat), alpha, beta, "repo").numpy())
    assert paper == pytest.approx(alpha * ce * math.log(lat) ** beta, rel=1e-5)
    assert repo == pytest.approx(alpha * beta * ce * math.log(lat), rel=1e-5)
    assert paper != pytest.approx(repo, rel=1e-3)


def test_unknown_form_is_refused():
    with pytest.raises(ValueError, match="form"):
        fbnet_loss(mge.tensor(1.0), mge.tensor(10.0), form="other")


@pytest.mark.parametrize("form", ["paper", "repo"])
def test_slower_op_gets_positive_theta_gradient(form):
    """With CE fixed, gradient descent must move theta away from the slower candidates."""
    lut = np.array([100.0, 400.0, 50.0, 200.0], np.float32)
    theta = mge.Parameter(np.zeros(4, np.float32))
    noise = np.zeros((1, 4), np.float32)
    gm = GradManager().attach([theta])
    with gm:
        m = gumbel_softmax(theta, noise, 1.0, "soft")
        lat = (m * mge.tensor(lut)).sum()
        loss = fbnet_loss(mge.tensor(2.0), lat, 0.2, 0.6, form)
        gm.backward(loss)
    grad = theta.grad.numpy()
    mean = lut.mean()
    assert (np.sign(grad) == np.sign(lut - mean)).all(), grad
    # and the value equals finite differences of the closed form
    def closed(th):
        p = np.exp(th) / np.exp(th).sum()
        l = float((p * lut).sum())
        return 0.2 * 2.0 * (math.log(l) ** 0.6 if form == "paper" else 0.6 * math.log(l))
    eps = 1e-3
    fd = [(closed(np.eye(4)[i] * eps) - closed(-np.eye(4)[i] * eps)) / (2 * eps)
          for i in range(4)]
    np.testing.assert_allclose(grad, fd, rtol=2e-3, atol=1e-7)
