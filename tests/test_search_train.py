"""Reference 7.5 items 12-13: disjoint weight/theta splits, exact resume, per-epoch checkpoints,
model selection on the validation split."""
import os

import numpy as np
import pytest

from common.checkpoint import load_checkpoint
from errors import UserError
from search.trainer import SearchConfig, Searcher, load_run, resume, split_indices
from tests.search_fixtures import tiny_data, tiny_lut, tiny_space

CFG = dict(epochs=2, warmup_epochs=1, batch_size=16, max_steps=2, seed=3)


@pytest.mark.parametrize("n,frac", [(10, 0.8), (1438, 0.8), (7, 0.5)])
def test_splits_are_disjoint_and_cover_the_training_set(n, frac):
    w, t = split_indices(n, frac, seed=0)
    assert not set(w) & set(t)
    assert sorted(set(w) | set(t)) == list(range(n))
    assert len(w) == round(n * frac)


def test_split_that_leaves_nothing_is_refused():
    with pytest.raises(UserError, match="empty"):
        split_indices(3, 0.99, 0)


def test_phases_draw_only_from_their_own_split(monkeypatch):
    space = tiny_space()
    train, val = tiny_data()
    s = Searcher(space, tiny_lut(space), train, val,
                 SearchConfig(epochs=1, warmup_epochs=0, batch_size=8, max_steps=0))
    seen = {"w": set(), "t": set()}
    real = Searcher._step

    def spy(self, idx, gm, opt, theta):
        seen["w" if gm is self.gm_w else "t"].update(int(i) for i in idx)
        return (1.0, 1.0, 1.0)

    monkeypatch.setattr(Searcher, "_step", spy)
    s.train_epoch(progress=False)
    assert seen["w"] == set(s.w_idx.tolist()) and seen["t"] == set(s.t_idx.tolist())
    assert not seen["w"] & seen["t"]
    assert real is not spy


def run_searcher(space, lut, out_dir, until=None):
    train, val = tiny_data()
    s = Searcher(space, lut, train, val, SearchConfig(**CFG), out_dir)
    s.run(until_epoch=until, progress=False)
    return s


def test_resume_continues_exactly(tmp_path):
    space = tiny_space()
    lut = tiny_lut(space)
    full = run_searcher(space, lut, str(tmp_path / "full"))
    run_searcher(space, lut, str(tmp_path / "half"), until=1)
    train, val = tiny_data()
    resumed = resume(str(tmp_path / "half" / "latest.pkl"), train, val, str(tmp_path / "half"))
    assert resumed.epoch == 1
    resumed.run(progress=False)
    a, b = full.state_dict(), resumed.state_dict()
    assert a["epoch"] == b["epoch"] == 2 and a["tau"] == b["tau"] < CFG["epochs"] * 5.0
    assert a["rng"] == b["rng"]
    for key in a["supernet"]:
        np.testing.assert_array_equal(a["supernet"][key], b["supernet"][key], err_msg=key)
    for opt in ("opt_w", "opt_t"):
        for i, st in a[opt]["state"].items():
            for k, v in st.items():
                np.testing.assert_array_equal(v, b[opt]["state"][i][k], err_msg=opt + k)
    assert [r["val_acc"] for r in a["history"]] == [r["val_acc"] for r in b["history"]]
    # theta moved in the theta epoch only
    assert not np.all(a["supernet"]["theta"] == 0)


def test_checkpoint_every_epoch_holds_the_whole_state(tmp_path):
    space = tiny_space()
    s = run_searcher(space, tiny_lut(space), str(tmp_path), until=1)
    state = load_checkpoint(str(tmp_path / "latest.pkl"))
    for key in ("supernet", "opt_w", "opt_t", "epoch", "tau", "rng", "space", "lut", "config",
                "history"):
        assert key in state
    assert state["epoch"] == 1 and state["tau"] == 5.0  # warm-up epoch: tau not annealed yet
    assert "theta" in state["supernet"]
    assert not os.path.exists(tmp_path / "best.pkl")  # warm-up epochs are not selected
    s.run(progress=False)
    best = load_run(str(tmp_path / "best.pkl"))
    assert best["best_acc"] == best["history"][-1]["val_acc"]
    assert best["tau"] == pytest.approx(5.0 * CFG_DECAY)
    assert [f for f in os.listdir(tmp_path) if f.endswith(".tmp")] == []


CFG_DECAY = SearchConfig().tau_decay


def test_argmax_validation_uses_the_validation_split_and_argmax(monkeypatch):
    space = tiny_space()
    train, val = tiny_data()
    s = Searcher(space, tiny_lut(space), train, val, SearchConfig(**CFG))
    seen = []
    real = s.model.forward_choice

    def spy(x, choices):
        seen.append((x.shape[0], list(choices)))
        return real(x, choices)

    monkeypatch.setattr(s.model, "forward_choice", spy)
    s.model.theta[...] = np.array([[0, 0, 1], [2, 0, 0]], np.float32)
    s.validate("argmax")
    assert sum(n for n, _ in seen) == len(val.labels)
    assert all(c == [2, 0] for _, c in seen)


@pytest.mark.parametrize("mode,noise", [("hard_st", "per_sample"), ("soft", "per_batch")])
def test_other_modes_train_theta(mode, noise):
    space = tiny_space()
    train, val = tiny_data()
    s = Searcher(space, tiny_lut(space), train, val,
                 SearchConfig(epochs=1, warmup_epochs=0, batch_size=8, max_steps=1, mode=mode,
                              noise=noise))
    s.train_epoch(progress=False)
    assert not np.all(s.model.theta.numpy() == 0)
    assert np.isfinite(s.history[-1]["theta_loss"])
