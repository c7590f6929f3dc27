"""Reference 7.5 item 14: derive -> arch.json -> the expected network, RepVGG layers fuse."""
import json

import numpy as np
import pytest

import megengine as mge

from model.opcount import count_params
from model.parity import check_parity, randomize_batchnorm, sample_inputs
from model import RepVGGBlock, is_deploy
from model.derived import ArchError, build_from_arch, build_from_arch_file
from search.derive import arch_from_choices, choose
from search.space import make_space
from tests.helpers import one_line_error, run_tool
from tests.search_fixtures import fit_fixed_batch, tiny_data

CANDS = ("ir_k3_e1", "ir_k3_s2", "skip", "repvgg", "ir_k5_e6")


def space():
    # stem 4, layers 4->4 s1, 4->8 s2, 8->8 s1, head 16
    return make_space("t", 8, 10, (4, 1), [(4, 1), (8, 2), (8, 1)], CANDS, head=16)


def bn(c):
    return 2 * c  # BN weight and bias (running statistics are not parameters)


def test_params_match_the_hand_count():
    sp = space()
    arch = arch_from_choices(sp, [CANDS.index("repvgg"), CANDS.index("skip"),
                                  CANDS.index("ir_k3_e1")])
    net = build_from_arch(arch)
    expected = (27 * 4 + bn(4)                                   # stem 3x3 3->4
                + 9 * 16 + bn(4) + 16 + bn(4) + bn(4)            # repvgg 4->4: 3x3, 1x1, id BN
                + 4 * 8 + bn(8)                                  # skip s2 = 1x1 conv-BN-ReLU
                + 64 + bn(8) + 9 * 8 + bn(8) + 64 + bn(8)        # ir_k3_e1 8->8
                + 8 * 16 + bn(16)                                # head 1x1
                + 16 * 10 + 10)                                  # linear
    assert count_params(net) == expected
    assert net(mge.tensor(np.zeros((2, 3, 8, 8), np.float32))).shape == (2, 10)
    assert [l["op"] for l in arch["layers"]] == ["repvgg", "skip", "ir_k3_e1"]
    assert arch["space_hash"] == sp.hash and arch["stem"] == {"channels": 4, "stride": 1}


def test_grouped_and_expanded_blocks_count():
    sp = space()
    net = build_from_arch(arch_from_choices(sp, [CANDS.index("ir_k3_s2"),
                                                 CANDS.index("ir_k5_e6"), 2]))
    ir_s2 = 4 * 4 // 2 + bn(4) + 9 * 4 + bn(4) + 4 * 4 // 2 + bn(4)    # grouped-2 pw convs
    ir_e6 = 4 * 24 + bn(24) + 25 * 24 + bn(24) + 24 * 8 + bn(8)         # 4 -> 24 -> 8
    assert count_params(net) == 27 * 4 + bn(4) + ir_s2 + ir_e6 + 8 * 16 + bn(16) + 170


def test_repvgg_layers_pass_the_deploy_parity_check(rng):
    sp = space()
    arch = arch_from_choices(sp, [CANDS.index("repvgg"), CANDS.index("repvgg"),
                                  CANDS.index("repvgg")])
    net = build_from_arch(arch)
    assert sum(isinstance(m, RepVGGBlock) for m in net.modules()) == 3
    randomize_batchnorm(net, rng, sample_inputs(rng, (8, 3, 8, 8)))
    parity, deploy = check_parity("derived", net, sample_inputs(rng, (6, 3, 8, 8)))
    assert parity.ok, parity
    assert is_deploy(deploy)
    deployed = build_from_arch(arch, deploy=True)
    assert set(deployed.state_dict()) == set(deploy.state_dict())


def test_argmax_and_seeded_sampling():
    theta = np.array([[0.0, 3.0, 0.0], [1.0, 0.0, 2.0]])
    assert [list(c) for c in choose(theta, "argmax")] == [[1, 2]]
    a = choose(theta, "sample", n=200, seed=7)
    assert [list(c) for c in a] == [list(c) for c in choose(theta, "sample", n=200, seed=7)]
    freq = np.mean([c[0] == 1 for c in a])
    p = np.exp(3) / (np.exp(3) + 2)
    assert abs(freq - p) < 4 * np.sqrt(p * (1 - p) / 200)


def test_derived_network_trains(tmp_path):
    sp = make_space("t", 8, 10, (4, 1), [(4, 1), (8, 2)], CANDS, head=0)
    path = tmp_path / "arch.json"
    path.write_text(json.dumps(arch_from_choices(sp, [3, 0])))
    mge.random.seed(0)
    net = build_from_arch_file(str(path))
    train, _ = tiny_data(n_train=32)
    x = mge.tensor(((train.images.astype(np.float32) / 255 - 0.5) / 0.5).transpose(0, 3, 1, 2))
    y = mge.tensor(train.labels)
    losses = fit_fixed_batch(net, x, y, 15)
    # fits a fixed batch: the loss falls
    assert np.isfinite(losses).all() and losses[-1] < 0.9 * losses[0], losses


def test_bad_arch_files_give_one_line_errors(tmp_path):
    with pytest.raises(ArchError, match="not found"):
        build_from_arch_file(str(tmp_path / "none.json"))
    arch = arch_from_choices(space(), [0, 0, 0])
    arch["layers"][1]["C_in"] = 5
    with pytest.raises(ArchError, match="layer 1 takes 5 channels"):
        build_from_arch(arch)
    arch = arch_from_choices(space(), [0, 0, 0])
    arch["layers"][0]["op"] = "no_such_op"
    with pytest.raises(ArchError, match="no_such_op"):
        build_from_arch(arch)


def test_derive_cli_without_a_run_is_one_line(tmp_path):
    proc = run_tool("search.py", "derive", "--run", str(tmp_path), "--out",
                    str(tmp_path / "a.json"))
    assert proc.returncode == 1
    assert "no best checkpoint" in one_line_error(proc)
    assert not (tmp_path / "a.json").exists()
