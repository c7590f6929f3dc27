"""The binary-ResNet-18 search preset over the binary primitives of ``model.binary.primitives``.

Needs the binary branch (issue 5: ``model.binary.primitives`` and the BOP counting it adds to
``model.opcount``); on the search branch alone every test here fails (ModuleNotFoundError), by
design, without stopping the collection of the rest of the suite.
"""
import numpy as np
import pytest

import megengine as mge

from model.opcount import count_ops
from model.derived import build_from_arch, op_kind
from search.derive import arch_from_choices
from search.gumbel import gumbel_softmax, noise_for_batch
from search.latency import PROXY, measure_table
from search.space import BINARY_CANDIDATES, get_space
from search.supernet import Supernet

SIZE = 8  # input size for the tests: spatial sizes 8, 8, 8, 4, 4, 2, 2, 1


def build_primitive(name, C_in, C_out, stride):
    from model.binary.primitives import build_primitive as build

    return build(name, C_in, C_out, stride)


def primitive_names():
    from model.binary.primitives import PRIMITIVE_NAMES

    return PRIMITIVE_NAMES


def test_preset_is_the_awnas_binary_resnet18_body():
    space = get_space("binary_resnet18")
    assert set(space.candidates) <= set(primitive_names())
    assert all(op_kind(c) == "binary" for c in space.candidates)
    assert [l.C_out for l in space.layers] == [64, 64, 128, 128, 256, 256, 512, 512]
    assert [l.stride for l in space.layers] == [1, 1, 2, 1, 2, 1, 2, 1]
    assert space.stem_channels == 64 and space.stem_stride == 1 and space.image_size == 32


@pytest.mark.parametrize("name", BINARY_CANDIDATES)
@pytest.mark.parametrize("c_in,c_out,stride", [(64, 64, 1), (64, 128, 2)])
def test_candidates_build_with_the_uniform_factory(name, c_in, c_out, stride):
    op = build_primitive(name, c_in, c_out, stride)
    y = op(mge.tensor(np.random.default_rng(0).normal(size=(2, c_in, 8, 8)).astype(np.float32)))
    assert y.shape == (2, c_out, 8 // stride, 8 // stride)


def test_binary_entries_are_the_ops_proxy():
    space = get_space("binary_resnet18", image_size=SIZE)
    table = measure_table(space, warmup=0, runs=1)
    assert table.unit == "Mops" and table.meta["us_per_op"] is None
    assert all(s == PROXY for row in table.source for s in row)
    for l, layer in enumerate(space.layers):
        for k, name in enumerate(space.candidates):
            op = build_primitive(name, layer.C_in, layer.C_out, layer.stride)
            counts = count_ops(op, (1, layer.C_in, layer.input_size, layer.input_size))
            assert table.latency[l, k] == pytest.approx(
                (counts["flops"] + counts["bops"] / 64) / 1e6)
    # a binary 3x3 conv block counts BOPs, not FLOPs, for its binary convs
    counts = count_ops(build_primitive("xnor_vgg_block", 64, 64, 1), (1, 64, 8, 8))
    assert counts["bops"] > 0


def test_mixed_table_converts_the_proxy_to_microseconds():
    space = get_space("binary_resnet18", candidates=("xnor_resnet_block", "ir_k3_e1"),
                      image_size=SIZE)
    table = measure_table(space, warmup=0, runs=1)
    assert table.unit == "us" and table.meta["us_per_op"] > 0
    assert [row[0] for row in table.source] == [PROXY] * 8
    assert [row[1] for row in table.source] == ["measured"] * 8
    layer = space.layers[0]
    op = build_primitive("xnor_resnet_block", layer.C_in, layer.C_out, layer.stride)
    ops = count_ops(op, (1, 64, SIZE, SIZE))["ops"]
    assert table.latency[0, 0] == pytest.approx(ops * table.meta["us_per_op"])


def test_supernet_and_derived_binary_network_run():
    space = get_space("binary_resnet18", image_size=SIZE)
    net = Supernet(space, measure_table(space, warmup=0, runs=1))
    noise = noise_for_batch(np.random.default_rng(0), 2, 8, len(space.candidates))
    m = gumbel_softmax(net.theta[:, None, :], noise, 1.0)
    logits, lat = net(mge.tensor(np.zeros((2, 3, SIZE, SIZE), np.float32)), m)
    assert logits.shape == (2, 10) and float(lat.numpy()) > 0
    arch = arch_from_choices(space, [0] * 8)
    model = build_from_arch(arch)
    assert model(mge.tensor(np.zeros((2, 3, SIZE, SIZE), np.float32))).shape == (2, 10)
    assert any(hasattr(m, "after_optimizer_step") for m in model.modules())
