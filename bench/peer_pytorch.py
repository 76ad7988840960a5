r"""The PyTorch peer's SimCLR training step, timed on this machine.

    pip install torch   # CPU build; not in requirements.txt
    python bench/peer_pytorch.py --depth=18 --stem=cifar
    python bench/peer_pytorch.py --depth=50 --stem=imagenet

What lightly's SimCLR example computes per step, in eager PyTorch: a torchvision-layout
ResNet (BasicBlock for 18/34, Bottleneck for 50+, BN after every conv; the CIFAR stem is
lightly's: 3x3 stride-1 conv, no max pool), lightly's `SimCLRProjectionHead`
(Linear-BN-ReLU-Linear to 128), NT-Xent over the 2B views (temperature 0.5), backward
and an SGD-with-momentum update. The network is written out here because the
torchvision wheel on PyPI is a CUDA build that does not load next to a CPU-only torch
(`operator torchvision::nms does not exist`), and lightly imports torchvision; the
layers, shapes and FLOPs are the same as torchvision's `resnet18` / `resnet50`.

Like bench/train_step.py it times steps on one fixed random batch (no input pipeline)
and measures the float32 [n, n] matmul rate in the same process, before and after the
steps. The last line is one JSON object: images_per_sec (median step),
images_per_sec_best (fastest step), matmul_flops_per_sec_fp32, torch_version,
num_threads, and the config.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

try:
  import torch
  from torch import nn
  import torch.nn.functional as F
except ImportError:
  sys.exit('error: bench/peer_pytorch.py needs PyTorch: pip install torch '
           '--index-url https://download.pytorch.org/whl/cpu')


class BasicBlock(nn.Module):
  """torchvision's BasicBlock: two 3x3 convs, identity or 1x1 projection shortcut."""
  expansion = 1

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.shortcut = _projection(in_channels, channels, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    return F.relu(out + self.shortcut(x))


class Bottleneck(nn.Module):
  """torchvision's Bottleneck (v1.5: the stride is on the 3x3 conv)."""
  expansion = 4

  def __init__(self, in_channels: int, channels: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(channels, channels, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(channels)
    self.conv3 = nn.Conv2d(channels, channels * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(channels * 4)
    self.shortcut = _projection(in_channels, channels * 4, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    return F.relu(out + self.shortcut(x))


def _projection(in_channels: int, out_channels: int, stride: int) -> nn.Module:
  if stride == 1 and in_channels == out_channels:
    return nn.Identity()
  return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                       nn.BatchNorm2d(out_channels))


BLOCKS = {18: (BasicBlock, [2, 2, 2, 2]), 34: (BasicBlock, [3, 4, 6, 3]),
          50: (Bottleneck, [3, 4, 6, 3]), 101: (Bottleneck, [3, 4, 23, 3])}


class ResNet(nn.Module):
  """Backbone up to the global average pool: [B, 3, H, W] -> [B, 512 * expansion]."""

  def __init__(self, depth: int, cifar_stem: bool):
    super().__init__()
    block, counts = BLOCKS[depth]
    if cifar_stem:
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(64), nn.ReLU())
    else:
      self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False),
                                nn.BatchNorm2d(64), nn.ReLU(),
                                nn.MaxPool2d(3, 2, 1))
    layers, in_channels = [], 64
    for group, (channels, count) in enumerate(zip([64, 128, 256, 512], counts)):
      for index in range(count):
        stride = 2 if group > 0 and index == 0 else 1
        layers.append(block(in_channels, channels, stride))
        in_channels = channels * block.expansion
    self.blocks = nn.Sequential(*layers)
    self.output_dim = in_channels

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1)


def projection_head(input_dim: int) -> nn.Module:
  """lightly's SimCLRProjectionHead(input_dim, input_dim, 128)."""
  return nn.Sequential(nn.Linear(input_dim, input_dim, bias=False),
                       nn.BatchNorm1d(input_dim), nn.ReLU(),
                       nn.Linear(input_dim, 128))


def nt_xent(z0: torch.Tensor, z1: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
  """lightly's NTXentLoss without a memory bank: cross-entropy over 2B - 1 others."""
  batch_size = z0.shape[0]
  z = F.normalize(torch.cat([z0, z1]), dim=1)  # [2B, 128]
  logits = z @ z.t() / temperature  # [2B, 2B]
  logits = logits - 1e9 * torch.eye(2 * batch_size)
  labels = torch.cat([torch.arange(batch_size, 2 * batch_size),
                      torch.arange(0, batch_size)])
  return F.cross_entropy(logits, labels)


def matmul_rate(sizes: list[int]) -> float:
  """Best float32 [n, n] x [n, n] matmul FLOP/s over `sizes`."""
  best = 0.0
  for n in sizes:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(3):
      start = time.perf_counter()
      a @ b
      times.append(time.perf_counter() - start)
    best = max(best, 2 * n ** 3 / min(times))
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--depth', type=int, default=18, choices=sorted(BLOCKS))
  parser.add_argument('--stem', choices=['cifar', 'imagenet'], default='cifar')
  parser.add_argument('--image_size', type=int, default=32)
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup_steps', type=int, default=2)
  parser.add_argument('--matmul_sizes', default='2048,4096')
  args = parser.parse_args()

  torch.manual_seed(0)
  backbone = ResNet(args.depth, cifar_stem=args.stem == 'cifar')
  model = nn.Sequential(backbone, projection_head(backbone.output_dim))
  optimizer = torch.optim.SGD(model.parameters(), lr=0.06, momentum=0.9,
                              weight_decay=5e-4)
  shape = (args.batch_size, 3, args.image_size, args.image_size)
  view0, view1 = torch.rand(shape), torch.rand(shape)

  def step() -> float:
    loss = nt_xent(model(view0), model(view1))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()

  sizes = [int(n) for n in args.matmul_sizes.split(',')]
  matmul_before = matmul_rate(sizes)
  for _ in range(args.warmup_steps):
    step()
  times = []
  for _ in range(args.steps):
    start = time.perf_counter()
    step()
    times.append(time.perf_counter() - start)
  matmul_after = matmul_rate(sizes)

  result = {
      'peer': 'pytorch-eager (lightly SimCLR step)',
      'torch_version': torch.__version__,
      'num_threads': torch.get_num_threads(),
      'resnet_depth': args.depth, 'stem': args.stem,
      'image_size': args.image_size, 'batch_size': args.batch_size,
      'steps': args.steps,
      'images_per_sec': args.batch_size / statistics.median(times),
      'images_per_sec_best': args.batch_size / min(times),
      'matmul_flops_per_sec_fp32': max(matmul_before, matmul_after),
  }
  print(f'{args.depth} {args.stem} b{args.batch_size} {args.image_size}px: '
        f'{result["images_per_sec"]:.2f} images/s (best {result["images_per_sec_best"]:.2f}), '
        f'fp32 matmul {result["matmul_flops_per_sec_fp32"] / 1e9:.1f} GFLOP/s')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
