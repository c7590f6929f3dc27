"""Reference RepVGG / RepVGGplus in PyTorch, written from the official design for the tests
and the benchmarks (``torch_reference.repvgg``).

Runs only in the PyTorch venv (.torchvenv, Python 3.11, torch 2.13.0). It shares no code with
the project: it is the independent side of every MegEngine-vs-PyTorch comparison. Module and
parameter names are those of the official repvgg.py / repvggplus.py, so its state dicts look
exactly like official checkpoints.
"""
import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(cin, cout, kernel_size, stride, padding, groups=1, relu=False):
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(cin, cout, kernel_size, stride, padding, groups=groups,
                                     bias=False))
    seq.add_module("bn", nn.BatchNorm2d(cout))
    if relu:
        seq.add_module("relu", nn.ReLU())
    return seq


class SEBlock(nn.Module):
    def __init__(self, input_channels, internal_neurons):
        super().__init__()
        self.down = nn.Conv2d(input_channels, internal_neurons, 1, 1, bias=True)
        self.up = nn.Conv2d(internal_neurons, input_channels, 1, 1, bias=True)
        self.input_channels = input_channels

    def forward(self, inputs):
        x = F.avg_pool2d(inputs, kernel_size=inputs.size(3))
        x = torch.sigmoid(self.up(F.relu(self.down(x))))
        return inputs * x.view(-1, self.input_channels, 1, 1)


class RepVGGBlock(nn.Module):
    """se_mode: None, "pre" (RepVGG-D2se: SE(out, out//16) before ReLU) or
    "post" (RepVGGplus: SE(out, out//4) after ReLU, attribute post_se)."""

    def __init__(self, cin, cout, stride=1, groups=1, deploy=False, se_mode=None):
        super().__init__()
        self.deploy, self.groups, self.in_channels, self.se_mode = deploy, groups, cin, se_mode
        if se_mode == "post":
            self.post_se = SEBlock(cout, cout // 4)
        else:
            self.se = SEBlock(cout, cout // 16) if se_mode == "pre" else nn.Identity()
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=True)
        else:
            self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
            self.rbr_dense = conv_bn(cin, cout, 3, stride, 1, groups)
            self.rbr_1x1 = conv_bn(cin, cout, 1, stride, 0, groups)

    def forward(self, x):
        if self.deploy:
            out = self.rbr_reparam(x)
        else:
            out = self.rbr_dense(x) + self.rbr_1x1(x)
            if self.rbr_identity is not None:
                out = out + self.rbr_identity(x)
        if self.se_mode == "post":
            return self.post_se(F.relu(out))
        return F.relu(self.se(out))

    def _fuse(self, branch):
        if branch is None:
            return 0, 0
        if isinstance(branch, nn.Sequential):
            kernel, bn = branch.conv.weight, branch.bn
        else:
            per_group = self.in_channels // self.groups
            kernel = torch.zeros(self.in_channels, per_group, 3, 3)
            for i in range(self.in_channels):
                kernel[i, i % per_group, 1, 1] = 1
            bn = branch
        std = (bn.running_var + bn.eps).sqrt()
        t = (bn.weight / std).reshape(-1, 1, 1, 1)
        return kernel * t, bn.bias - bn.running_mean * bn.weight / std

    @torch.no_grad()
    def switch_to_deploy(self):
        if self.deploy:
            return
        k3, b3 = self._fuse(self.rbr_dense)
        k1, b1 = self._fuse(self.rbr_1x1)
        ki, bi = self._fuse(self.rbr_identity)
        conv = self.rbr_dense.conv
        self.rbr_reparam = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1,
                                     groups=conv.groups, bias=True)
        self.rbr_reparam.weight.copy_(k3 + F.pad(k1, [1, 1, 1, 1]) + ki)
        self.rbr_reparam.bias.copy_(b3 + b1 + bi)
        del self.rbr_dense, self.rbr_1x1, self.rbr_identity
        self.deploy = True


GROUPWISE = [2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26]


class RepVGG(nn.Module):
    def __init__(self, num_blocks, num_classes, width_multiplier, groups=1, deploy=False,
                 use_se=False):
        super().__init__()
        a = width_multiplier
        se_mode = "pre" if use_se else None
        self.in_planes = min(64, int(64 * a[0]))
        self.stage0 = RepVGGBlock(3, self.in_planes, 2, deploy=deploy, se_mode=se_mode)
        self.cur = 1
        groups_map = {l: groups for l in GROUPWISE} if groups > 1 else {}

        def stage(planes, n):
            blocks = []
            for s in [2] + [1] * (n - 1):
                blocks.append(RepVGGBlock(self.in_planes, planes, s, groups_map.get(self.cur, 1),
                                          deploy, se_mode))
                self.in_planes, self.cur = planes, self.cur + 1
            return nn.ModuleList(blocks)

        self.stage1 = stage(int(64 * a[0]), num_blocks[0])
        self.stage2 = stage(int(128 * a[1]), num_blocks[1])
        self.stage3 = stage(int(256 * a[2]), num_blocks[2])
        self.stage4 = stage(int(512 * a[3]), num_blocks[3])
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(int(512 * a[3]), num_classes)

    def forward(self, x):
        out = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3, self.stage4):
            for block in stage:
                out = block(out)
        return self.linear(self.gap(out).flatten(1))


class RepVGGplusStage(nn.Module):
    def __init__(self, cin, cout, n, stride, deploy):
        super().__init__()
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(RepVGGBlock(cin, cout, s, deploy=deploy, se_mode="post"))
            cin = cout
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x):
        for block in self.blocks:
            x = block(x)
        return x


class RepVGGplus(nn.Module):
    def __init__(self, num_blocks, num_classes, width_multiplier, deploy=False):
        super().__init__()
        a = width_multiplier
        w = [min(64, int(64 * a[0])), int(64 * a[0]), int(128 * a[1]), int(256 * a[2]),
             int(512 * a[3])]
        self.deploy = deploy
        self.stage0 = RepVGGBlock(3, w[0], 2, deploy=deploy, se_mode="post")
        self.stage1 = RepVGGplusStage(w[0], w[1], num_blocks[0], 2, deploy)
        self.stage2 = RepVGGplusStage(w[1], w[2], num_blocks[1], 2, deploy)
        self.stage3_first = RepVGGplusStage(w[2], w[3], num_blocks[2] // 2, 2, deploy)
        self.stage3_second = RepVGGplusStage(w[3], w[3], num_blocks[2] // 2, 1, deploy)
        self.stage4 = RepVGGplusStage(w[3], w[4], num_blocks[3], 2, deploy)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(w[4], num_classes)
        if not deploy:
            for name, c in (("stage1_aux", w[1]), ("stage2_aux", w[2]),
                            ("stage3_first_aux", w[3])):
                setattr(self, name, nn.Sequential(conv_bn(c, c, 3, 2, 1, relu=True),
                                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                  nn.Linear(c, num_classes)))

    def forward(self, x):
        """Main logits (the official model returns a dict with auxiliary logits in train form;
        the tests only compare main logits in eval mode)."""
        out = self.stage0(x)
        for stage in (self.stage1, self.stage2, self.stage3_first, self.stage3_second,
                      self.stage4):
            out = stage(out)
        return self.linear(self.gap(out).flatten(1))

    def switch_to_deploy(self):
        for name in ("stage1_aux", "stage2_aux", "stage3_first_aux"):
            if hasattr(self, name):
                delattr(self, name)
        self.deploy = True


# The official model factory.
VARIANTS = {
    "RepVGG-A0": ([2, 4, 14, 1], [0.75, 0.75, 0.75, 2.5], 1, False),
    "RepVGG-A1": ([2, 4, 14, 1], [1, 1, 1, 2.5], 1, False),
    "RepVGG-A2": ([2, 4, 14, 1], [1.5, 1.5, 1.5, 2.75], 1, False),
    "RepVGG-B0": ([4, 6, 16, 1], [1, 1, 1, 2.5], 1, False),
    "RepVGG-B1": ([4, 6, 16, 1], [2, 2, 2, 4], 1, False),
    "RepVGG-B1g2": ([4, 6, 16, 1], [2, 2, 2, 4], 2, False),
    "RepVGG-B1g4": ([4, 6, 16, 1], [2, 2, 2, 4], 4, False),
    "RepVGG-B2": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 1, False),
    "RepVGG-B2g2": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 2, False),
    "RepVGG-B2g4": ([4, 6, 16, 1], [2.5, 2.5, 2.5, 5], 4, False),
    "RepVGG-B3": ([4, 6, 16, 1], [3, 3, 3, 5], 1, False),
    "RepVGG-B3g2": ([4, 6, 16, 1], [3, 3, 3, 5], 2, False),
    "RepVGG-B3g4": ([4, 6, 16, 1], [3, 3, 3, 5], 4, False),
    "RepVGG-D2se": ([8, 14, 24, 1], [2.5, 2.5, 2.5, 5], 1, True),
}


def build(name, deploy=False, num_classes=1000):
    if name == "RepVGGplus-L2pse":
        return RepVGGplus([8, 14, 24, 1], num_classes, [2.5, 2.5, 2.5, 5], deploy)
    num_blocks, width, groups, use_se = VARIANTS[name]
    return RepVGG(num_blocks, num_classes, width, groups, deploy, use_se)


def convert_to_deploy(model):
    model = copy.deepcopy(model)
    for module in list(model.modules()):
        if hasattr(module, "switch_to_deploy"):
            module.switch_to_deploy()
    return model
