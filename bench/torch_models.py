"""PyTorch twins of the seed CNNs in fpclass/models/architectures/cnn.py: same layers, widths and pooling (the benchmarks'
reference side; parameter counts are checked against fpclass's by the scripts)."""
import torch
from torch import nn


class FootprintCNN(nn.Module):
  """Seed 000: conv 32/64 (3x3, same) + ReLU + 2x2 max pool each, FC 128, head; Kaiming-normal init."""

  def __init__(self, image_shape=(120, 80, 1), num_outputs=2, conv_channels=(32, 64), fc_sizes=(128,), dropout=0.0):
    super().__init__()
    h, w, c = image_shape
    layers = []
    for channels in conv_channels:
      layers += [nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
      c, h, w = channels, h // 2, w // 2
    layers.append(nn.Flatten())
    features = c * h * w
    for size in fc_sizes:
      layers += [nn.Linear(features, size), nn.ReLU(), nn.Dropout(dropout)]
      features = size
    layers.append(nn.Linear(features, num_outputs))
    self.net = nn.Sequential(*layers)
    for m in self.modules():
      if isinstance(m, (nn.Conv2d, nn.Linear)):
        nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
        nn.init.zeros_(m.bias)

  def forward(self, x):
    return self.net(x)


class CifarCNN(nn.Module):
  """Seed 001: 3 blocks of (conv + ReLU) x 2, batch norm (Keras momentum/epsilon), 2x2 max pool, dropout;
  global average pooling; dense 128, 64 with dropout; head."""

  def __init__(self, num_outputs=2, channels=3, block_channels=(32, 64, 128), dense_sizes=(128, 64), dropout=0.3,
               dense_dropout=0.3):
    super().__init__()
    layers, c = [], channels
    for width in block_channels:
      layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                 nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.MaxPool2d(2), nn.Dropout(dropout)]
      c = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    for size in dense_sizes:
      layers += [nn.Linear(c, size), nn.ReLU(), nn.Dropout(dense_dropout)]
      c = size
    layers.append(nn.Linear(c, num_outputs))
    self.net = nn.Sequential(*layers)

  def forward(self, x):
    return self.net(x)


def count_params(model: torch.nn.Module) -> int:
  return sum(p.numel() for p in model.parameters())
