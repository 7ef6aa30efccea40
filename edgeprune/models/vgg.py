"""CIFAR-style VGG-16 with batch norm.

Invariant: ``features`` is torchvision's vgg16_bn conv stack (configuration D: 13 conv+BN+ReLU
layers, 5 max-pools) with the same indices, so ``features.N.*`` keys and shapes equal
torchvision's (e.g. ``features.0.weight`` [64, in, 3, 3], last conv ``features.40``).

Differences from torchvision's vgg16_bn, made for small inputs:
- the max-pools use ``ceil_mode=True``: 32x32 goes 16/8/4/2/1 as before, and 28x28
  (Fashion-MNIST) goes 14/7/4/2/1 instead of collapsing to zero;
- ``avgpool`` is a global average pool to 1x1 (not 7x7), and ``classifier`` is a single
  ``Linear(512, num_classes)`` instead of the 4096-wide three-layer head, so ImageNet
  classifier weights do not load (the feature weights do).
"""
from __future__ import annotations

from torch import Tensor, nn

CFG_D: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                512, 512, 512, "M", 512, 512, 512, "M")


def make_features(cfg: tuple[int | str, ...], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        else:
            layers += [nn.Conv2d(channels, int(item), kernel_size=3, padding=1),
                       nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
            channels = int(item)
    return nn.Sequential(*layers)


class VGG(nn.Module):
    def __init__(self, cfg: tuple[int | str, ...], num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.features = make_features(cfg, in_channels)
        width = [c for c in cfg if c != "M"][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = nn.Linear(int(width), num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.avgpool(self.features(x)).flatten(1))


def vgg16_bn(num_classes: int = 10, in_channels: int = 3) -> VGG:
    """VGG-16 with BN for 32x32 (or 28x28) inputs; see the module docstring for the head."""
    return VGG(CFG_D, num_classes=num_classes, in_channels=in_channels)
