"""hubconf.py for megengine.hub: one entry per registered name; weights from a path or URL."""
import functools
import http.server
import os
import pathlib
import threading

import numpy as np
import pytest

import megengine as mge
from megengine.hub.tools import load_module

from ckpt_converter import ConverterError
from ckpt_converter.fetch import weight_file
from ckpt_fixtures import (ROOT, assert_logits_close, layout_fixtures,  # noqa: F401
                           torch_fixtures)
from model import is_deploy, list_models


@pytest.fixture(scope="module")
def hubconf():
    # what megengine.hub.load does with the repository it fetched
    return load_module("hubconf", os.path.join(ROOT, "hubconf.py"))


def entry_names(module):  # megengine.hub.list's rule
    return [n for n in dir(module) if not n.startswith("__") and callable(getattr(module, n))]


def logits(model, folder):
    return model(mge.tensor(np.load(os.path.join(folder, "input.npy")))).numpy()


def test_one_entry_per_registered_name(hubconf):
    assert entry_names(hubconf) == list_models()
    net = getattr(hubconf, "RepVGG-A0")(num_classes=7)
    assert net.linear.weight.shape == (7, 1280)
    assert "RepVGG-B1g2" in getattr(hubconf, "RepVGG-B1g2").__doc__


def test_pretrained_from_file_url_and_local_path(hubconf, torch_fixtures,  # noqa: F811
                                                 layout_fixtures):
    folder, manifest = torch_fixtures
    case = manifest["cases"]["a0_train_zip"]
    url = pathlib.Path(folder, case["file"]).as_uri()
    assert url.startswith("file:///")
    net = getattr(hubconf, "RepVGG-A0")(pretrained=url, deploy=True)
    assert is_deploy(net)
    assert_logits_close(logits(net, folder), np.load(os.path.join(folder, case["logits"])))
    # a local path, in timm's layout, through pretrained=True + weights=
    lib_folder, lib_manifest = layout_fixtures["timm"]
    timm_case = lib_manifest["cases"]["timm_a0_train.safetensors"]
    net = getattr(hubconf, "RepVGG-A0")(pretrained=True, weights=os.path.join(
        lib_folder, timm_case["file"]), num_classes=10)
    assert_logits_close(logits(net, folder), np.load(os.path.join(lib_folder, timm_case["logits"])))


def test_pretrained_errors_are_user_errors(hubconf, torch_fixtures, tmp_path):  # noqa: F811
    entry = getattr(hubconf, "RepVGG-A0")
    with pytest.raises(ConverterError, match="needs weights=PATH_OR_URL"):
        entry(pretrained=True)
    path = os.path.join(torch_fixtures[0], torch_fixtures[1]["cases"]["a0_train_zip"]["file"])
    with pytest.raises(ConverterError, match="holds 1000 classes, not 10"):
        entry(pretrained=path, num_classes=10)
    with pytest.raises(ConverterError, match="checkpoint not found"):
        entry(pretrained=(tmp_path / "none.pth").as_uri())
    with pytest.raises(ConverterError, match="unsupported URL scheme 'ftp'"):
        entry(pretrained="ftp://example.invalid/a0.pth")


def test_http_url_is_downloaded_once_into_the_cache(torch_fixtures, tmp_path):  # noqa: F811
    folder, manifest = torch_fixtures
    name = manifest["cases"]["g2_deploy_legacy"]["file"]
    requests = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(args)

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=folder))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = "http://127.0.0.1:%d/%s" % (server.server_address[1], name)
        cache = tmp_path / "cache"
        first = weight_file(url, cache_dir=str(cache))
        second = weight_file(url, cache_dir=str(cache))
        missing = url.replace(name, "missing.pth")
        with pytest.raises(ConverterError, match="cannot download .*missing.pth"):
            weight_file(missing, cache_dir=str(cache))
    finally:
        server.shutdown()
        server.server_close()
    gets = [args[1] for args in requests if len(args) > 1 and str(args[1]).startswith("GET")]
    assert first == second and gets == ["GET /%s HTTP/1.1" % name, "GET /missing.pth HTTP/1.1"]
    # (the second call for the file used the cache)
    assert pathlib.Path(first).read_bytes() == pathlib.Path(folder, name).read_bytes()
    assert sorted(os.listdir(cache)) == [os.path.basename(first)]  # no temp file left
