"""mnist_20000p_20e: a 13,010-parameter MNIST network exported by budgetnas.

Trial 1 of study 'mnist-20000p-20e', retrained on the full training set with seeds [0, 1, 2]; weights of seed 2.

Measured: mean test accuracy 99.55%, min 99.46%, per seed [99.46, 99.61, 99.57], final epoch of 20, budget 20,000 parameters.
Receptive field 24x24. Input: N x 1 x 28 x 28 floats in [0, 1]
(what ToTensor gives); the network normalises them itself. Output: N x 10 logits.

    from mnist_20000p_20e import load
    net = load()              # weights from mnist_20000p_20e.pt beside this file, eval mode
    logits = net(images)
"""

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

PARAMS = 13010
SPEC = {
    'blocks': [
        {'type': 'conv', 'in': 1, 'out': 8, 'padding': 1, 'bias': True, 'dropout': 0.0},
        {'type': 'conv', 'in': 8, 'out': 16, 'padding': 1, 'bias': True, 'dropout': 0.0},
        {'type': 'maxpool'},
        {'type': 'conv', 'in': 16, 'out': 16, 'padding': 1, 'bias': True, 'dropout': 0.0},
        {'type': 'conv', 'in': 16, 'out': 24, 'padding': 1, 'bias': True, 'dropout': 0.0},
        {'type': 'maxpool'},
        {'type': 'conv', 'in': 24, 'out': 24, 'padding': 1, 'bias': False, 'dropout': 0.0},
        {'type': 'pointwise', 'in': 24, 'out': 16, 'bias': True, 'dropout': 0.0},
    ],
    'head': {'type': 'gap_conv', 'in': 16, 'bias': True, 'dropout': 0.0},
}
METRICS = {'test_accuracy': [99.46, 99.61, 99.57],
 'test_accuracy_mean': 99.5467,
 'test_accuracy_min': 99.46,
 'seeds': [0, 1, 2],
 'weights_seed': 2,
 'weights_test_accuracy': 99.57,
 'epochs': 20,
 'budget': 20000,
 'params': 13010,
 'val_accuracy': 99.43,
 'train_subset': None}

MEAN, STD = 0.1307, 0.3081


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=True)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, bias=True)
        self.bn2 = nn.BatchNorm2d(16)
        self.conv4 = nn.Conv2d(16, 16, 3, padding=1, bias=True)
        self.bn4 = nn.BatchNorm2d(16)
        self.conv5 = nn.Conv2d(16, 24, 3, padding=1, bias=True)
        self.bn5 = nn.BatchNorm2d(24)
        self.conv7 = nn.Conv2d(24, 24, 3, padding=1, bias=False)
        self.bn7 = nn.BatchNorm2d(24)
        self.conv8 = nn.Conv2d(24, 16, 1, bias=True)
        self.bn8 = nn.BatchNorm2d(16)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Conv2d(16, 10, 1, bias=True)

    def forward(self, x):
        x = (x - MEAN) / STD
        x = F.relu(self.bn1(self.conv1(x)))  # 1x28x28 -> 8x28x28, RF 3
        x = F.relu(self.bn2(self.conv2(x)))  # 8x28x28 -> 16x28x28, RF 5
        x = F.max_pool2d(x, 2)  # 16x28x28 -> 16x14x14, RF 6
        x = F.relu(self.bn4(self.conv4(x)))  # 16x14x14 -> 16x14x14, RF 10
        x = F.relu(self.bn5(self.conv5(x)))  # 16x14x14 -> 24x14x14, RF 14
        x = F.max_pool2d(x, 2)  # 24x14x14 -> 24x7x7, RF 16
        x = F.relu(self.bn7(self.conv7(x)))  # 24x7x7 -> 24x7x7, RF 24
        x = F.relu(self.bn8(self.conv8(x)))  # 24x7x7 -> 16x7x7, RF 24
        x = self.gap(x)
        x = self.head(x)  # -> 10x1x1
        return x.flatten(1)


def load(device="cpu"):
    """A Net in eval mode with the trained weights from the .pt file beside this module."""
    weights = Path(__file__).with_suffix(".pt")
    if not weights.exists():
        raise FileNotFoundError(f"no weights at {weights}: this module was exported untrained")
    net = Net()
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return net.to(device).eval()
