"""ImageNet-style ResNet-18 whose ``state_dict`` keys and shapes match torchvision's.

Invariant: ``resnet18(num_classes=1000, in_channels=3).state_dict()`` has exactly
torchvision's keys and shapes (122 entries, 11,689,512 parameters), so torchvision-style
checkpoints load with ``strict=True``. ``BasicBlock`` keeps torchvision's attribute names
(conv1, bn1, conv2, bn2, downsample = Sequential(conv 1x1, bn)); the CIFAR ResNets reuse it.
"""
from __future__ import annotations

from torch import Tensor, nn


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    """The shortcut used when a block changes shape: 1x1 conv + BN (He et al.'s option B)."""
    return nn.Sequential(nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_planes))


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN layers plus an identity or projection shortcut, then ReLU."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = projection(in_planes, planes, stride) if stride != 1 or in_planes != planes else None
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def make_stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """``blocks`` BasicBlocks; only the first may stride or change width."""
    layers = [BasicBlock(in_planes, planes, stride)]
    layers += [BasicBlock(planes, planes) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def init_resnet(model: nn.Module) -> None:
    """torchvision's ResNet initialisation: He-normal (fan_out) convs, BN weight 1 / bias 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class ResNet(nn.Module):
    """7x7/2 stem, 3x3/2 max-pool, four BasicBlock stages (64/128/256/512), global average pool, fc."""

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000, in_channels: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = make_stage(64, 64, layers[0], 1)
        self.layer2 = make_stage(64, 128, layers[1], 2)
        self.layer3 = make_stage(128, 256, layers[2], 2)
        self.layer4 = make_stage(256, 512, layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512, num_classes)
        init_resnet(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """ResNet-18 (He et al. 2016), torchvision layout; default input 224x224."""
    return ResNet((2, 2, 2, 2), num_classes=num_classes, in_channels=in_channels)
