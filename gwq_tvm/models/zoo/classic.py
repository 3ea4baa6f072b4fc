"""Classic ImageNet architectures: AlexNet, VGG-16, GoogLeNet (with LRN), SqueezeNet 1.1, DenseNet-121, ResNet-50.

Layer tables from the papers (cited per class).  The classifiers of AlexNet
and VGG are sized for the input they are built for (the flattened feature
map), since their published 224-px fully-connected sizes assume a 6x6 / 7x7
map; everything else is unchanged.
"""

import torch
from torch import nn


class _LRNFunction(torch.autograd.Function):
    """Cross-channel LRN that exports as one ONNX ``LRN`` node (torch's own is traced into Pad/AvgPool/Pow)."""

    @staticmethod
    def forward(ctx, x, size, alpha, beta, k):
        return nn.functional.local_response_norm(x, size, alpha, beta, k)

    @staticmethod
    def symbolic(g, x, size, alpha, beta, k):
        return g.op("LRN", x, size_i=size, alpha_f=alpha, beta_f=beta, bias_f=k)


class LRN(nn.Module):
    """``x / (k + alpha/size * sum_{window} x^2)^beta`` over ``size`` neighbouring channels (ONNX ``LRN``)."""

    def __init__(self, size=5, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.args = (size, alpha, beta, k)

    def forward(self, x):
        return _LRNFunction.apply(x, *self.args)


def _relu_conv(c_in, c_out, k, stride=1, padding=0):
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride, padding), nn.ReLU(inplace=False))


class AlexNet(nn.Module):
    """AlexNet, the single-tower variant (Krizhevsky 2014, "One weird trick"), with its dropout classifier."""

    def __init__(self, num_classes: int = 1000, image: int = 64):
        super().__init__()
        self.features = nn.Sequential(
            _relu_conv(3, 64, 11, 4, 2), nn.MaxPool2d(3, 2),
            _relu_conv(64, 192, 5, 1, 2), nn.MaxPool2d(3, 2),
            _relu_conv(192, 384, 3, 1, 1), _relu_conv(384, 256, 3, 1, 1), _relu_conv(256, 256, 3, 1, 1),
            nn.MaxPool2d(3, 2),
        )
        side = self.features(torch.zeros(1, 3, image, image)).shape[-1]
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(256 * side * side, 4096), nn.ReLU(),
            nn.Dropout(0.5), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class VGG16(nn.Module):
    """VGG-16, configuration D (Simonyan & Zisserman 2015, Table 1), no batch norm, dropout classifier."""

    CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")

    def __init__(self, num_classes: int = 1000, image: int = 64):
        super().__init__()
        layers, c = [], 3
        for v in self.CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(_relu_conv(c, v, 3, 1, 1))
                c = v
        self.features = nn.Sequential(*layers)
        side = image // 32
        self.classifier = nn.Sequential(
            nn.Linear(512 * side * side, 4096), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))


class Inception(nn.Module):
    """GoogLeNet's inception module: 1x1 | 1x1→3x3 | 1x1→5x5 | maxpool→1x1, concatenated."""

    def __init__(self, c_in, c1, c3r, c3, c5r, c5, pool):
        super().__init__()
        self.b1 = _relu_conv(c_in, c1, 1)
        self.b2 = nn.Sequential(_relu_conv(c_in, c3r, 1), _relu_conv(c3r, c3, 3, 1, 1))
        self.b3 = nn.Sequential(_relu_conv(c_in, c5r, 1), _relu_conv(c5r, c5, 5, 1, 2))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _relu_conv(c_in, pool, 1))

    def forward(self, x):
        return torch.cat((self.b1(x), self.b2(x), self.b3(x), self.b4(x)), 1)


class GoogLeNet(nn.Module):
    """GoogLeNet (Szegedy et al. 2015, Table 1) with its two local response normalisations, no aux heads."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.stem = nn.Sequential(
            _relu_conv(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1), LRN(5, 1e-4, 0.75, 1.0),
            _relu_conv(64, 64, 1), _relu_conv(64, 192, 3, 1, 1), LRN(5, 1e-4, 0.75, 1.0),
            nn.MaxPool2d(3, 2, 1),
        )
        self.body = nn.Sequential(
            Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), nn.MaxPool2d(3, 2, 1),
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), nn.MaxPool2d(3, 2, 1),
            Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.4), nn.Linear(1024, num_classes))

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(self.stem(x)), 1), 1))


class Fire(nn.Module):
    """SqueezeNet's fire module: squeeze 1x1, then expand 1x1 | 3x3 concatenated."""

    def __init__(self, c_in, squeeze, e1, e3):
        super().__init__()
        self.squeeze = _relu_conv(c_in, squeeze, 1)
        self.e1 = _relu_conv(squeeze, e1, 1)
        self.e3 = _relu_conv(squeeze, e3, 3, 1, 1)

    def forward(self, x):
        s = self.squeeze(x)
        return torch.cat((self.e1(s), self.e3(s)), 1)


class SqueezeNet11(nn.Module):
    """SqueezeNet 1.1 (Iandola et al., the v1.1 table of the reference repository): ceil-mode max pools."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.features = nn.Sequential(
            _relu_conv(3, 64, 3, 2), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(64, 16, 64, 64), Fire(128, 16, 64, 64), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(128, 32, 128, 128), Fire(256, 32, 128, 128), nn.MaxPool2d(3, 2, ceil_mode=True),
            Fire(256, 48, 192, 192), Fire(384, 48, 192, 192), Fire(384, 64, 256, 256), Fire(512, 64, 256, 256),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), _relu_conv(512, num_classes, 1))

    def forward(self, x):
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.classifier(self.features(x)), 1), 1)


class DenseLayer(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to its input."""

    def __init__(self, c_in, growth, bn_size=4):
        super().__init__()
        self.f = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, bn_size * growth, 1, bias=False),
            nn.BatchNorm2d(bn_size * growth), nn.ReLU(), nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x):
        return torch.cat((x, self.f(x)), 1)


class DenseNet121(nn.Module):
    """DenseNet-121 (Huang et al. 2017, Table 1): growth 32, blocks 6/12/24/16, compression 0.5."""

    def __init__(self, num_classes: int = 1000, growth: int = 32, blocks=(6, 12, 24, 16)):
        super().__init__()
        c = 2 * growth
        layers = [nn.Conv2d(3, c, 7, 2, 3, bias=False), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        for i, n in enumerate(blocks):
            for _ in range(n):
                layers.append(DenseLayer(c, growth))
                c += growth
            if i != len(blocks) - 1:
                layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c // 2, 1, bias=False), nn.AvgPool2d(2, 2)]
                c //= 2
        layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))


class Bottleneck(nn.Module):
    """ResNet's bottleneck (1x1, 3x3, 1x1 to ``4 * width``); ResNeXt's has a grouped 3x3 of ``inner`` channels."""

    def __init__(self, c_in, width, stride, inner=None, groups=1):
        super().__init__()
        c_out, inner = 4 * width, inner or width
        self.f = nn.Sequential(
            nn.Conv2d(c_in, inner, 1, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, inner, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(inner), nn.ReLU(),
            nn.Conv2d(inner, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )
        self.short = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.short = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.f(x) + self.short(x))


class ResNet50(nn.Module):
    """ResNet-50 (He et al. 2016, Table 1; stride on the 3x3 conv) with a softmax head, as Caffe2 exported it.

    ``cardinality`` > 1 gives ResNeXt-50 (Xie et al. 2017, Table 1): the 3x3 of each bottleneck is a grouped
    conv of ``cardinality`` groups of ``group_width * width / 64`` channels (32x4d: 128 to 1024 channels).
    """

    def __init__(self, num_classes: int = 1000, softmax: bool = True, cardinality: int = 1, group_width: int = 64):
        super().__init__()
        layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1)]
        c = 64
        for width, n, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(n):
                inner = cardinality * group_width * width // 64
                layers.append(Bottleneck(c, width, stride if i == 0 else 1, inner, cardinality))
                c = 4 * width
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c, num_classes)
        self.softmax = softmax

    def forward(self, x):
        logits = self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.features(x), 1), 1))
        return torch.softmax(logits, 1) if self.softmax else logits
