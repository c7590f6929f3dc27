"""Weight EMA: updates against a numpy recomputation (parameters and BN statistics), the
official schedule, an exact state round trip through a checkpoint file, and deploy conversion
of the averaged model."""
import megengine as mge
import megengine.functional as F
import numpy as np
import pytest
from megengine.autodiff import GradManager
from megengine.optimizer import SGD

from common.checkpoint import load_checkpoint, save_checkpoint
from model import RepVGG, convert_to_deploy
from training.ema import ModelEma, OfficialEmaSchedule


def tiny_model():
    return RepVGG([1, 1, 1, 1], num_classes=5, width_multiplier=(0.125, 0.125, 0.125, 0.125))


def numpy_state(model):
    """Every parameter and buffer as numpy, read independently of training.ema."""
    return {name: value.copy() for name, value in model.state_dict().items()}


def train_steps(model, gm, opt, rng, steps):
    """Real SGD steps in train mode: the weights move and BN running statistics update."""
    model.train()
    for _ in range(steps):
        x = mge.tensor(rng.normal(size=(4, 3, 16, 16)).astype(np.float32))
        y = mge.tensor(rng.integers(0, 5, size=4))
        with gm:
            loss = F.nn.cross_entropy(model(x), y)
            gm.backward(loss)
        opt.step().clear_grad()


@pytest.fixture
def setup():
    mge.random.seed(0)
    model = tiny_model()
    gm = GradManager().attach(model.parameters())
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, gm, opt, np.random.default_rng(0)


def test_update_equals_the_numpy_recomputation_over_several_steps(setup):
    model, gm, opt, rng = setup
    ema = ModelEma(model, decay=0.9)
    expected = numpy_state(model)
    assert any("running_mean" in k for k in expected) and any("running_var" in k for k in expected)
    for step, decay in enumerate([None, 0.5, None, 0.99, 0.0]):
        train_steps(model, gm, opt, rng, 2)
        current = numpy_state(model)
        d = 0.9 if decay is None else decay
        expected = {k: expected[k] * np.float32(d) + current[k] * np.float32(1 - d) for k in expected}
        ema.update(model, decay)
        got = ema.state_dict()
        assert got.keys() == expected.keys()
        for k in expected:
            assert got[k].dtype == np.float32
            assert np.array_equal(got[k], expected[k]), (step, k)
    # decay 0 copies the model, BN statistics included
    assert all(np.array_equal(ema.state_dict()[k], current[k]) for k in current)


def test_bn_statistics_are_averaged_not_left_behind(setup):
    model, gm, opt, rng = setup
    ema = ModelEma(model, decay=0.5)
    before = ema.state_dict()
    train_steps(model, gm, opt, rng, 3)
    ema.update(model)
    after, current = ema.state_dict(), numpy_state(model)
    for k in (k for k in before if "running_" in k):
        assert not np.array_equal(after[k], before[k])
        assert np.allclose(after[k], 0.5 * before[k] + 0.5 * current[k], rtol=1e-6, atol=1e-7)


def test_the_ema_module_is_a_separate_eval_copy(setup):
    model, gm, opt, rng = setup
    ema = ModelEma(model, decay=0.9)
    assert not ema.module.training and ema.module is not model
    frozen = ema.state_dict()
    train_steps(model, gm, opt, rng, 2)  # training the model leaves the EMA untouched
    assert all(np.array_equal(ema.state_dict()[k], frozen[k]) for k in frozen)
    # and the module evaluates the averaged values
    ema.update(model)
    x = mge.tensor(rng.normal(size=(2, 3, 16, 16)).astype(np.float32))
    check = tiny_model()
    check.load_state_dict(ema.state_dict())
    check.eval()
    assert np.array_equal(ema.module(x).numpy(), check(x).numpy())


def test_state_round_trip_through_a_checkpoint_is_bit_exact(setup, tmp_path):
    model, gm, opt, rng = setup
    ema = ModelEma(model, decay=0.97)
    for _ in range(3):
        train_steps(model, gm, opt, rng, 1)
        ema.update(model)
    save_checkpoint({"ema": ema.state_dict()}, str(tmp_path / "latest.pkl"))
    resumed = ModelEma(tiny_model(), decay=0.97)  # a fresh model, as after a restart
    resumed.load_state_dict(load_checkpoint(str(tmp_path / "latest.pkl"))["ema"])
    for _ in range(3):  # both continue from the same model states
        train_steps(model, gm, opt, rng, 1)
        ema.update(model)
        resumed.update(model)
    a, b = ema.state_dict(), resumed.state_dict()
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)


def test_the_ema_module_converts_to_deploy(setup):
    model, gm, opt, rng = setup
    ema = ModelEma(model, decay=0.8)
    train_steps(model, gm, opt, rng, 2)
    ema.update(model)
    deploy = convert_to_deploy(ema.module)
    deploy.eval()
    x = mge.tensor(rng.normal(size=(2, 3, 16, 16)).astype(np.float32))
    assert np.allclose(deploy(x).numpy(), ema.module(x).numpy(), rtol=1e-4, atol=1e-5)


def test_mismatched_state_is_refused(setup):
    model, *_ = setup
    ema = ModelEma(model)
    state = ema.state_dict()
    with pytest.raises(ValueError):
        ema.load_state_dict({k: v for k, v in state.items() if "running_var" not in k})
    name = next(iter(state))
    with pytest.raises(ValueError):
        ema.load_state_dict(dict(state, **{name: np.zeros((1, 2), np.float32)}))
    other = RepVGG([1, 1, 1, 1], num_classes=3, width_multiplier=(0.125,) * 4)
    with pytest.raises(ValueError):
        ema.update(other)
    with pytest.raises(ValueError):
        ema.load_state_dict(numpy_state(other))


def test_official_schedule():
    # utils.update_model_ema: update when iteration % period == 0; alpha = min(1, EMA_ALPHA *
    # total batch / epochs * period); alpha = 1 during warm-up epochs; ema = ema (1-a) + model a
    schedule = OfficialEmaSchedule(ema_alpha=1e-5, total_batch_size=256, epochs=120, update_period=8,
                                   warmup_epochs=5)
    alpha = 1e-5 * 256 * 8 / 120
    assert [schedule.decay(10, i) for i in range(10)] == \
        [pytest.approx(1 - alpha)] + [None] * 7 + [pytest.approx(1 - alpha), None]
    assert schedule.decay(4, 0) == 0.0 and schedule.decay(4, 3) is None  # warm-up: plain copy
    assert schedule.decay(5, 16) == pytest.approx(1 - alpha)
    assert OfficialEmaSchedule(1.0, 256, 120, 8, 0).decay(0, 0) == 0.0  # alpha capped at 1
    assert OfficialEmaSchedule(1e-5, 256, 120, 0, 0).decay(3, 0) is None  # period 0: off
