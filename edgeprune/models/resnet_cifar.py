"""CIFAR-style ResNet-20/32/56 (He et al. 2016, section 4.2) with prunable projection shortcuts.

Invariant: the network is a 3x3 conv stem of 16 channels, three stages of ``n`` BasicBlocks
at 16/32/64 channels (depth = 6n + 2), global average pooling and ``fc``. Where a block
changes shape the shortcut is a 1x1 conv + BN (option B) instead of the paper's zero-padding
(option A), so Torch-Pruning can trace and prune every channel. Attribute names follow
torchvision (conv1, bn1, layer1..layer3, fc; blocks conv1/bn1/conv2/bn2/downsample).
Any input of at least 8x8 works (32x32 CIFAR, 28x28 Fashion-MNIST).
"""
from __future__ import annotations

from torch import Tensor, nn

from edgeprune.models.resnet import init_resnet, make_stage


class CifarResNet(nn.Module):
    def __init__(self, blocks_per_stage: int, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        n = blocks_per_stage
        self.conv1 = nn.Conv2d(in_channels, 16, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = make_stage(16, 16, n, 1)
        self.layer2 = make_stage(16, 32, n, 2)
        self.layer3 = make_stage(32, 64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(64, num_classes)
        init_resnet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.avgpool(x).flatten(1))


def resnet20(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-20 (n=3), about 0.27M parameters."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-32 (n=5), about 0.47M parameters."""
    return CifarResNet(5, num_classes=num_classes, in_channels=in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> CifarResNet:
    """ResNet-56 (n=9), about 0.86M parameters."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels)
