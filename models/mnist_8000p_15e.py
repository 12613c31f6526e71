"""mnist_8000p_15e: a 7,676-parameter MNIST network exported by budgetnas.

Trial 0 of study 'mnist-8000p-15e', retrained on the full training set with seeds [0, 1, 2]; weights of seed 0.

Measured: mean test accuracy 99.46%, min 99.44%, per seed [99.45, 99.50, 99.44], final epoch of 15, budget 8,000 parameters.
Receptive field 20x20. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_8000p_15e import load
    net = load()              # weights from mnist_8000p_15e.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 7676
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 4, 'padding': 0, 'bias': False, 'dropout': 0.0},
        {'type': 'conv', 'in': 4, 'out': 8, 'padding': 0, 'bias': False, 'dropout': 0.0},
        {'type': 'conv', 'in': 8, 'out': 16, 'padding': 0, 'bias': False, 'dropout': 0.0},
        {'type': 'transition', 'in': 16, 'out': 8, 'bias': False},
        {'type': 'conv', 'in': 8, 'out': 16, 'padding': 0, 'bias': False, 'dropout': 0.0},
        {'type': 'conv', 'in': 16, 'out': 16, 'padding': 0, 'bias': False, 'dropout': 0.0},
        {'type': 'conv', 'in': 16, 'out': 16, 'padding': 1, 'bias': False, 'dropout': 0.0},
    ],
    'head': {'type': 'conv_gap', 'in': 16, 'bias': False, 'dropout': 0.0},
}
METRICS = {'test_accuracy': [99.45, 99.5, 99.44],
 'test_accuracy_mean': 99.4633,
 'test_accuracy_min': 99.44,
 'seeds': [0, 1, 2],
 'weights_seed': 0,
 'weights_test_accuracy': 99.45,
 'epochs': 15,
 'budget': 8000,
 'params': 7676,
 'val_accuracy': 99.4,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=0, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 8, 3, padding=0, bias=False)
        self.bn2 = nn.BatchNorm2d(8)
        self.conv3 = nn.Conv2d(8, 16, 3, padding=0, bias=False)
        self.bn3 = nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 8, 1, bias=False)
        self.conv5 = nn.Conv2d(8, 16, 3, padding=0, bias=False)
        self.bn5 = nn.BatchNorm2d(16)
        self.conv6 = nn.Conv2d(16, 16, 3, padding=0, bias=False)
        self.bn6 = nn.BatchNorm2d(16)
        self.conv7 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn7 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(16, 10, 1, bias=False)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = F.relu(self.bn1(self.conv1(x)))  # 1x28x28 -> 4x26x26, RF 3
        x = F.relu(self.bn2(self.conv2(x)))  # 4x26x26 -> 8x24x24, RF 5
        x = F.relu(self.bn3(self.conv3(x)))  # 8x24x24 -> 16x22x22, RF 7
        x = F.max_pool2d(self.conv4(x), 2)  # 16x22x22 -> 8x11x11, RF 8
        x = F.relu(self.bn5(self.conv5(x)))  # 8x11x11 -> 16x9x9, RF 12
        x = F.relu(self.bn6(self.conv6(x)))  # 16x9x9 -> 16x7x7, RF 16
        x = F.relu(self.bn7(self.conv7(x)))  # 16x7x7 -> 16x7x7, RF 20
        x = self.gap(self.head(x))  # -> 10x1x1
        return x.flatten(1)


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    weights = Path(__file__).with_suffix(".pt")
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}: this module was exported untrained")
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
