"""int8 quantization (quant/): equalization keeps the function, PTQ error against the uniform
quantization noise theory, QAT's BN re-insertion, refusals, and the generated CIFAR-format data."""
import math

import numpy as np
import pytest

import megengine as mge

import model
from model.parity import randomize_batchnorm, sample_inputs
from quant import equalize, metrics, network, ptq, qat
from quant.pipeline import AlreadyQuantizedError, refuse_quantized


def tiny_deploy(rng, **kwargs):
    net = model.RepVGG([1, 2, 1, 1], num_classes=10, width_multiplier=[0.25] * 4, **kwargs)
    randomize_batchnorm(net, rng, sample_inputs(rng, (32, 3, 32, 32)))
    deploy = model.convert_to_deploy(net)
    deploy.eval()
    return deploy


def chain_logits(layers, linear, x):
    chain = network.QuantChain(layers, linear)
    chain.eval()
    return chain(mge.tensor(x)).numpy()


def test_chain_and_equalization_keep_the_function(rng):
    deploy = tiny_deploy(rng, override_groups_map={2: 2})
    x = sample_inputs(rng, (8, 3, 32, 32))
    ref = deploy(mge.tensor(x)).numpy()
    layers, linear = network.chain_of(deploy)
    assert np.abs(chain_logits(layers, linear, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    eq_layers, eq_linear = equalize.equalize(layers, linear)
    assert np.abs(chain_logits(eq_layers, eq_linear, x) - ref).max() <= 1e-5 * np.abs(ref).max()
    # every neighbouring pair now has equal ranges: output channel c of one layer, input c of
    # the next (grouped kernels included), the last conv with the classifier's columns
    nxt = [(l.kernel, l.groups) for l in eq_layers[1:]] + [(eq_linear[0], 1)]
    for layer, (weight, groups) in zip(eq_layers, nxt):
        r1 = np.abs(layer.kernel.reshape(layer.out_channels, -1)).max(1)
        if weight.ndim == 2:
            r2 = np.abs(weight).max(0)
        else:
            w = weight.reshape(groups, -1, *weight.shape[-3:])  # (g, o/g, i/g, k, k)
            r2 = np.abs(w).max(axis=(1, 3, 4)).reshape(-1)
        np.testing.assert_allclose(r1, r2, rtol=1e-3)
    # and it round-trips into the architecture's deploy checkpoint keys
    assert set(network.deploy_state_dict(eq_layers, eq_linear)) == set(deploy.state_dict())


def theory_nsr(layers, linear, batches):
    """Noise-to-signal power of int8 uniform quantization, summed over the quantization points
    (input, every ReLU output, the pooled features, the logits; every weight tensor), each
    ``(scale^2 / 12) / E[x^2]`` with the symmetric max-range scale MegEngine's MinMax observer
    picks: max|x| / 127.5 for activations (qint8), max|w| / 127 for weights (qint8_narrow)."""
    x = np.concatenate(batches).astype(np.float64)
    acts = [x]
    for layer in layers:
        x = _np_conv_relu(x, layer)
        acts.append(x)
    pooled = x.mean(axis=(2, 3))
    acts += [pooled, pooled @ linear[0].T.astype(np.float64) + linear[1]]
    nsr = sum((np.abs(a).max() / 127.5) ** 2 / 12 / np.mean(a ** 2) for a in acts)
    for w in [l.kernel for l in layers] + [linear[0]]:
        w = w.astype(np.float64)
        nsr += (np.abs(w).max() / 127) ** 2 / 12 / np.mean(w ** 2)
    return nsr


def _np_conv_relu(x, layer):
    k = layer.kernel.reshape(-1, *layer.kernel.shape[-3:]).astype(np.float64)
    g, (s, _), (p, _) = layer.groups, layer.stride, layer.padding
    xp = np.pad(x, [(0, 0), (0, 0), (p, p), (p, p)])
    win = np.lib.stride_tricks.sliding_window_view(xp, (3, 3), axis=(2, 3))[:, :, ::s, ::s]
    cg, og = k.shape[1], k.shape[0] // g
    out = np.concatenate([np.einsum("nchwij,ocij->nohw", win[:, i * cg:(i + 1) * cg],
                                    k[i * og:(i + 1) * og]) for i in range(g)], axis=1)
    return np.maximum(out + layer.bias.reshape(1, -1, 1, 1), 0)


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("equalized", [False, True])
def test_ptq_error_matches_quantization_noise_theory(seed, equalized):
    rng = np.random.default_rng(seed)
    deploy = tiny_deploy(rng)
    layers, linear = network.chain_of(deploy)
    if equalized:
        layers, linear = equalize.equalize(layers, linear)
    calib = [sample_inputs(rng, (32, 3, 32, 32)) for _ in range(4)]
    check = sample_inputs(rng, (256, 3, 32, 32))
    int8 = ptq.calibrate(network.QuantChain(layers, linear), calib, "minmax", progress=False)
    ref = deploy(mge.tensor(check)).numpy().astype(np.float64)
    out = int8(mge.tensor(check)).numpy()
    result = metrics.agreement(ref, out)
    nsr = theory_nsr(layers, linear, calib)
    # Independent noise sources add; propagation through the layers may amplify the noise a
    # little (measured up to ~1.1 dB here): allow a factor 2 (3 dB), no more.
    assert result.sqnr_db >= -10 * math.log10(nsr) - 3.0, (result, -10 * math.log10(nsr))
    # Expected top-1 agreement under Gaussian logit noise of that (doubled) power: a sample
    # flips when the noise difference of its top two logits exceeds their margin.
    sigma = math.sqrt(2 * nsr * np.mean(ref ** 2))
    top2 = np.sort(ref, axis=1)[:, -2:]
    p_flip = np.array([0.5 * math.erfc((m / (sigma * math.sqrt(2))) / math.sqrt(2))
                       for m in top2[:, 1] - top2[:, 0]])
    expected = 1 - p_flip.mean()
    spread = math.sqrt((p_flip * (1 - p_flip)).sum()) / len(p_flip)
    assert result.top1_agreement >= expected - 3 * spread, (result, expected, spread)


def test_qat_chain_starts_equal_to_the_float_model(rng):
    deploy = tiny_deploy(rng)
    layers, linear = network.chain_of(deploy)
    batches = [sample_inputs(rng, (16, 3, 32, 32)) for _ in range(2)]
    chain = network.chain_with_bn(layers, linear, batches)
    chain.eval()
    x = sample_inputs(rng, (4, 3, 32, 32))
    ref = deploy(mge.tensor(x)).numpy()
    assert np.abs(chain(mge.tensor(x)).numpy() - ref).max() <= 1e-5 * np.abs(ref).max()
    # train mode: BN normalises with the batch's own statistics; initialised from that very
    # batch, it computes the float model's function at the start of fine-tuning
    one = network.chain_with_bn(layers, linear, batches[:1])
    one.train()
    out = one(mge.tensor(batches[0])).numpy()
    ref_b = deploy(mge.tensor(batches[0])).numpy()
    assert np.abs(out - ref_b).max() <= 1e-4 * np.abs(ref_b).max()
    folded, folded_linear = network.folded_layers(chain, layers)
    for a, b in zip(folded, layers):
        np.testing.assert_allclose(a.kernel, b.kernel, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(a.bias, b.bias, rtol=1e-4, atol=1e-5)


def test_qat_steps_train_the_fake_quantized_chain(rng):
    from data.loader import make_loader
    from data.sources import ArraySource
    from data.transforms import small_train

    deploy = tiny_deploy(rng)
    layers, linear = network.chain_of(deploy)
    images = rng.integers(0, 255, (32, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, 32)
    source = ArraySource(images, labels, [str(i) for i in range(10)], "random")
    loader = make_loader(source, small_train(32), 16, shuffle=True, drop_last=True)
    calib = [sample_inputs(rng, (16, 3, 32, 32))]
    chain = qat.prepare(layers, linear, calib)
    before = chain.convs[0].conv.weight.numpy().copy()
    history = qat.finetune(chain, loader, 2, 1, 0.01, progress=False)
    assert len(history) == 1 and math.isfinite(history[0][0])
    assert not np.array_equal(before, chain.convs[0].conv.weight.numpy())
    int8 = ptq.to_int8(chain)
    assert int8(mge.tensor(calib[0])).numpy().shape == (16, 10)
    # With fake quantization on, the folded weights are the ones the trained network computed
    # with: each conv's folded kernel on its per-tensor int8 grid (the weight observer's scale),
    # not the unrounded fold (QAT trains through the rounding; the unrounded weights are another
    # network: 34.5% vs 93.6% top-1 on the digits A0).
    import megengine.quantization as Q

    rounded, rounded_linear = network.folded_layers(chain, layers)
    for module, layer in zip(chain.convs, rounded):
        scale = float(module.weight_observer.get_qparams().scale.numpy())
        steps = layer.kernel / scale
        assert np.abs(steps).max() <= 127 + 1e-3
        np.testing.assert_allclose(steps, np.round(steps), atol=1e-3)
    # The fine-tuned float weights (our BN fold) compute what MegEngine's own QAT modules
    # compute with fake quantization off (their fold of the trained BN statistics).

    Q.disable_fake_quant(chain)
    chain.eval()
    ref = chain(mge.tensor(calib[0])).numpy()
    folded, folded_linear = network.folded_layers(chain, layers)
    out = chain_logits(folded, folded_linear, calib[0])
    assert np.abs(out - ref).max() <= 1e-4 * np.abs(ref).max()


def test_squeeze_excitation_is_refused(rng):
    net = model.RepVGG([1, 1, 1, 1], num_classes=4, width_multiplier=[0.5] * 4, use_se=True)
    deploy = model.convert_to_deploy(net)
    with pytest.raises(network.UnsupportedModelError, match="squeeze-and-excitation"):
        network.chain_of(deploy)
    with pytest.raises(network.UnsupportedModelError, match="RepVGGplus"):
        network.chain_of(model.RepVGGplus([1, 1, 1, 1], num_classes=4,
                                          width_multiplier=[0.25] * 4, deploy=True))


def test_quantized_state_is_refused(rng):
    deploy = tiny_deploy(rng)
    layers, linear = network.chain_of(deploy)
    observed = ptq.calibrate(network.QuantChain(layers, linear),
                             [sample_inputs(rng, (4, 3, 32, 32))], progress=False)
    state = {k: np.asarray(v) for k, v in observed.state_dict().items()}
    with pytest.raises(AlreadyQuantizedError):
        refuse_quantized("q.pkl", {"arch": "RepVGG-A0", "state_dict": state})
    refuse_quantized("f.pkl", {"arch": "x", "state_dict": {
        k: np.asarray(v) for k, v in deploy.state_dict().items()}})  # float: accepted


def test_sqnr_definition():
    ref = np.array([[3.0, 4.0]])
    assert metrics.sqnr_db(ref, ref) == float("inf")
    assert metrics.sqnr_db(ref, ref + [[0.0, 0.5]]) == pytest.approx(10 * math.log10(25 / 0.25))


def test_shapes10_is_deterministic_and_reads_as_cifar10(tmp_path):
    from data import shapes10
    from data.cifar import load_cifar

    a, la = shapes10.generate(40, seed=3)
    b, lb = shapes10.generate(40, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(la, lb)
    assert a.shape == (40, 32, 32, 3) and a.dtype == np.uint8
    assert np.bincount(la, minlength=10).tolist() == [4] * 10
    assert not np.array_equal(a, shapes10.generate(40, seed=4)[0])
    shapes10.write_cifar10(tmp_path, train=25, test=10, seed=3)
    train, val = load_cifar(str(tmp_path), "cifar10")
    assert len(train) == 25 and len(val) == 10
    assert train.classes == shapes10.CLASSES
    images, labels = shapes10.generate(35, seed=3)  # the files hold these, in order
    np.testing.assert_array_equal(train.images, images[:25])
    np.testing.assert_array_equal(val.images, images[25:])
    np.testing.assert_array_equal(val.labels, labels[25:])
