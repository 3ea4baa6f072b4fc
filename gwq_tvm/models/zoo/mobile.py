"""Mobile architectures: MobileNetV2, MobileNetV3-Small/-Large, EfficientNet-B0/-Lite0, ShuffleNetV2.

Each follows its paper's layer table (cited per class); widths are the 1.0x
models'.  Inputs are 3-channel NCHW images of any size divisible by 32.
"""

import torch
from torch import nn

from ..fmnist_mobilenetv3 import SMALL_BLOCKS, FMNISTMobileNetV3, InvertedResidual, SqueezeExcite, conv_bn_act, make_divisible

RE, HS = nn.ReLU, nn.Hardswish

#: MobileNetV3-Small (Howard et al. 2019, Table 2): the bundled model's table with the first block at stride 2.
V3_SMALL = ((*SMALL_BLOCKS[0][:5], 2),) + SMALL_BLOCKS[1:]

#: MobileNetV3-Large (Table 1).
V3_LARGE = (
    (3, 16, 16, False, RE, 1),
    (3, 64, 24, False, RE, 2),
    (3, 72, 24, False, RE, 1),
    (5, 72, 40, True, RE, 2),
    (5, 120, 40, True, RE, 1),
    (5, 120, 40, True, RE, 1),
    (3, 240, 80, False, HS, 2),
    (3, 200, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 184, 80, False, HS, 1),
    (3, 480, 112, True, HS, 1),
    (3, 672, 112, True, HS, 1),
    (5, 672, 160, True, HS, 2),
    (5, 960, 160, True, HS, 1),
    (5, 960, 160, True, HS, 1),
)


def mobilenet_v3_small(num_classes: int = 1000) -> nn.Module:
    return FMNISTMobileNetV3(num_classes, in_channels=3, blocks=V3_SMALL, head=1024)


def mobilenet_v3_large(num_classes: int = 1000) -> nn.Module:
    return FMNISTMobileNetV3(num_classes, in_channels=3, blocks=V3_LARGE, head=1280)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al. 2018, Table 2): ReLU6 inverted residuals with linear bottlenecks."""

    #: (expansion t, out c, repeats n, first stride s)
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        c = 32
        layers = [conv_bn_act(3, c, 3, 2, 1, nn.ReLU6)]
        for t, out, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(InvertedResidual(c, 3, c * t, out, False, nn.ReLU6, s if i == 0 else 1))
                c = out
        layers.append(conv_bn_act(c, 1280, 1, 1, 1, nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class EfficientSE(nn.Module):
    """EfficientNet's squeeze-excitation: squeeze width from the block *input*, SiLU, sigmoid gate."""

    def __init__(self, channels: int, squeeze: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))


def MBConv(c_in, c_out, k, stride, expand, se: bool, act) -> nn.Module:
    """EfficientNet's MBConv: MobileNetV3's inverted residual with :class:`EfficientSE` (squeeze from the input width)."""
    return InvertedResidual(c_in, k, c_in * expand, c_out, se, act, stride,
                            se_module=lambda c: EfficientSE(c, max(1, c_in // 4)))


class EfficientNet(nn.Module):
    """EfficientNet-B0 (Tan & Le 2019, Table 1); ``lite=True`` is EfficientNet-Lite0 (no SE, ReLU6)."""

    #: (expansion, kernel, stride, out, repeats)
    STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
              (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))

    def __init__(self, num_classes: int = 1000, lite: bool = False):
        super().__init__()
        act = nn.ReLU6 if lite else nn.SiLU
        c = 32
        layers = [conv_bn_act(3, c, 3, 2, 1, act)]
        for e, k, s, out, n in self.STAGES:
            for i in range(n):
                layers.append(MBConv(c, out, k, s if i == 0 else 1, e, not lite, act))
                c = out
        layers.append(conv_bn_act(c, 1280, 1, 1, 1, act))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


def channel_shuffle(x, groups: int):
    """ShuffleNet's shuffle: ``reshape(N, g, C/g, H, W) → transpose(1, 2) → reshape(N, C, H, W)``."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (Ma et al. 2018, Fig. 3c/d): channel split (stride 1) or two branches (stride 2)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.stride = stride
        half = c_out // 2
        if stride == 2:
            self.branch1 = nn.Sequential(conv_bn_act(c_in, c_in, 3, 2, c_in, None), conv_bn_act(c_in, half, 1, 1, 1, nn.ReLU))
        b_in = c_in if stride == 2 else half
        self.branch2 = nn.Sequential(
            conv_bn_act(b_in, half, 1, 1, 1, nn.ReLU), conv_bn_act(half, half, 3, stride, half, None),
            conv_bn_act(half, half, 1, 1, 1, nn.ReLU),
        )

    def forward(self, x):
        if self.stride == 1:
            a, b = x.chunk(2, dim=1)
            out = torch.cat((a, self.branch2(b)), 1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), 1)
        return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    """ShuffleNetV2 1.0x (Table 5): stages of 116/232/464 channels repeated 4/8/4, conv5 1024."""

    def __init__(self, num_classes: int = 1000, stages=(116, 232, 464), repeats=(4, 8, 4)):
        super().__init__()
        layers = [conv_bn_act(3, 24, 3, 2, 1, nn.ReLU), nn.MaxPool2d(3, 2, 1)]
        c = 24
        for out, n in zip(stages, repeats):
            for i in range(n):
                layers.append(ShuffleUnit(c, out, 2 if i == 0 else 1))
                c = out
        layers.append(conv_bn_act(c, 1024, 1, 1, 1, nn.ReLU))
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1024, num_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


__all__ = ["MobileNetV2", "mobilenet_v3_small", "mobilenet_v3_large", "EfficientNet", "ShuffleNetV2",
           "SqueezeExcite", "make_divisible"]
