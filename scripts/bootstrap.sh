#!/usr/bin/env bash
# Build the project's virtual environments; a fast no-op when they are up to date.
#
#   scripts/bootstrap.sh          .venv       Python 3.10 + requirements.txt (MegEngine needs <= 3.10)
#   scripts/bootstrap.sh torch    .torchvenv  Python 3.11 + torch==2.13.0 (CPU), used only by the
#                                              tests and benchmarks that compare against real PyTorch
#
# Interpreters are found automatically (PYTHON310 / PYTHON311 override the search).
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {  # find_python 3.10 -> path of an interpreter of that version, or nothing
    local want=$1 override=$2 cand root
    local -a cands=()
    [ -n "$override" ] && cands+=("$override")
    cands+=("python$want")
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        for cand in "$root"/versions/"$want"*/bin/python"$want"; do cands+=("$cand"); done
    fi
    cands+=("/usr/bin/python$want" "/usr/local/bin/python$want" "python3")
    for cand in "${cands[@]}"; do
        if [ -x "$cand" ] || command -v "$cand" >/dev/null 2>&1; then
            if [ "$(PYENV_VERSION=$want "$cand" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" = "$want" ]; then
                PYENV_VERSION=$want "$cand" -c 'import sys; print(sys.executable)'
                return 0
            fi
        fi
    done
    return 1
}

pip_install() {  # pip_install DIR PIP-ARGS...
    local dir=$1; shift
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 2>&1 \
        | grep -v "is ignored: it is neither a file nor a directory" >&2 || true
}

# make_venv DIR VERSION OVERRIDE STAMP-CONTENT PIP-ARGS...
make_venv() {
    local dir=$1 version=$2 override=$3 stamp=$4; shift 4
    if [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ]; then
        return 0
    fi
    local py
    if ! py=$(find_python "$version" "$override"); then
        echo "error: no Python $version interpreter found (looked for python$version on PATH and in pyenv);" \
             "install Python $version or set PYTHON${version/./}=/path/to/python$version" >&2
        exit 1
    fi
    echo "setting up $dir with $py" >&2
    rm -rf "$dir"
    "$py" -m venv "$dir"
    pip_install "$dir" "$@"
    [ -n "${EXTRA_NODEPS:-}" ] && pip_install "$dir" --no-deps $EXTRA_NODEPS
    # pip's exit status is lost in the pipe above: check the install really worked
    "$dir/bin/python" -c "$CHECK" || { echo "error: installing into $dir failed" >&2; exit 1; }
    echo "$stamp" > "$dir/.stamp"
}

case "${1:-main}" in
    main)
        CHECK='import megengine, numpy, PIL, tqdm, pytest, pytest_timeout, openvino, numba; assert numpy.__version__ < "2"'
        make_venv .venv 3.10 "${PYTHON310:-}" "$(cat requirements.txt)" -r requirements.txt
        ;;
    torch)
        # torch 2.13.0's CPU wheel lies on this machine's local index; never ask for another version
        # (that pulls a multi-GB CUDA build).
        # Besides torch: the real libraries that write test fixtures (yacs for the official training
        # checkpoint's config, timm) and the inference peers of the deploy benchmark (ONNX Runtime,
        # OpenVINO). timm and torchvision go in without their dependencies: any torchvision but the
        # one built for torch 2.13 would pull another torch.
        # The checkpoint-layout fixtures also need mmpretrain (with the pure-Python mmcv-lite its
        # version range accepts) and PaddlePaddle; PaddleClas goes in without its dependencies
        # (only its RepVGG model file is used, see tests/torch_ref/layout_fixtures.py).
        TORCH_EXTRAS="numpy onnx==1.23.* onnxruntime==1.23.* openvino==2026.4.* yacs==0.1.8 pyyaml huggingface_hub safetensors mmpretrain==1.2.0 mmcv-lite==2.1.0 mmengine==0.10.7 paddlepaddle==3.3.1"
        EXTRA_NODEPS="torchvision==0.28.* timm==1.0.* paddleclas==2.6.0"
        # torchvision's import registers kernels for ops its CPU-less wheel lacks; the fixture script
        # guards that, so only its presence is checked here.
        CHECK='import torch, yacs, onnx, onnxruntime, openvino, paddle, mmengine, importlib.metadata as m; m.version("timm"); m.version("torchvision"); m.version("mmpretrain"); m.version("paddleclas"); assert torch.__version__.startswith("2.13.0")'
        make_venv .torchvenv 3.11 "${PYTHON311:-}" "torch==2.13.0 $TORCH_EXTRAS $EXTRA_NODEPS" "torch==2.13.0" $TORCH_EXTRAS
        ;;
    *)
        echo "usage: scripts/bootstrap.sh [main|torch]" >&2; exit 2 ;;
esac
