"""The CenterNet shapes network in PyTorch, layer for layer jaxdet's, for the train-step benchmark's peer.

Same layers as `jaxdet.models.detectors.centernet.CenterNet` built from a config's `model` section: ResNet-18/34
(7x7/2 stem, BN, ReLU, 3x3/2 max-pool; basic blocks with a 1x1 projection where the shape changes), the deconv neck
(3x3 conv, BN, ReLU, 4x4/2 transposed conv, BN, + BN(1x1 lateral), ReLU), and three heads (3x3 conv + bias, ReLU,
1x1 conv + bias). The loss has CenterNet's structure (penalty-reduced focal loss over the heatmap / number of
positives, L1 at the centre cells / number of objects), on targets jaxdet's `assign` made. Adam after global-norm
clipping, as `jaxdet.train.optim` builds it. Only the FLOPs and memory traffic are meant to match: the initial
weights are PyTorch's defaults.
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
STAGES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}


def _bn(c: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)  # flax momentum 0.9 is torch's 0.1


class BasicBlock(nn.Module):

  def __init__(self, c_in: int, c_out: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
    self.bn1 = _bn(c_out)
    self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
    self.bn2 = _bn(c_out)
    self.proj = None
    if c_in != c_out or stride != 1:
      self.proj = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), _bn(c_out))

  def forward(self, x):
    y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu((x if self.proj is None else self.proj(x)) + y)


class CenterNet(nn.Module):
  """Returns (heatmap, offset, size) logits, NCHW, for uint8 images NHWC."""

  def __init__(self, *, num_classes: int, depth: int, width: int, neck_features, skip_connections: bool,
               head_features: int, size_scale: float):
    super().__init__()
    self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1))
    self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1))
    self.stem = nn.Sequential(nn.Conv2d(3, width, 7, 2, 3, bias=False), _bn(width), nn.ReLU(),
                              nn.MaxPool2d(3, 2, 1))
    blocks, c, self.stage_ends = [], width, []
    for stage, n in enumerate(STAGES[depth]):
      for b in range(n):
        blocks.append(BasicBlock(c, width * 2**stage, 2 if stage > 0 and b == 0 else 1))
        c = width * 2**stage
      self.stage_ends.append(len(blocks) - 1)
    self.blocks = nn.ModuleList(blocks)
    stage_channels = [width * 2**s for s in range(4)]
    self.neck, self.laterals = nn.ModuleList(), nn.ModuleList()
    for i, f in enumerate(neck_features):
      self.neck.append(nn.Sequential(nn.Conv2d(c, f, 3, 1, 1, bias=False), _bn(f), nn.ReLU(),
                                     nn.ConvTranspose2d(f, f, 4, 2, 1, bias=False), _bn(f)))
      self.laterals.append(nn.Sequential(nn.Conv2d(stage_channels[-2 - i], f, 1, bias=False), _bn(f))
                           if skip_connections else nn.Identity())
      c = f
    self.skip_connections = skip_connections
    self.size_scale = size_scale
    self.channels_last = False

    def branch(out):
      return nn.Sequential(nn.Conv2d(c, head_features, 3, 1, 1), nn.ReLU(), nn.Conv2d(head_features, out, 1))
    self.heads = nn.ModuleList([branch(num_classes), branch(2), branch(2)])

  def forward(self, images):
    x = (images.permute(0, 3, 1, 2).float() - self.mean) / self.std
    x = x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)
    x = self.stem(x)
    maps = []
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i in self.stage_ends:
        maps.append(x)
    for i, (up, lateral) in enumerate(zip(self.neck, self.laterals)):
      x = up(x)
      if self.skip_connections:
        x = x + lateral(maps[-2 - i])
      x = F.relu(x)
    heatmap, offset, size = (head(x) for head in self.heads)
    return heatmap, offset, size * self.size_scale


def centernet_loss(outputs, targets, *, size_weight: float, offset_weight: float):
  """CenterNet's loss on NCHW outputs and jaxdet's NHWC targets (same normalisation as jaxdet's)."""
  heatmap, offset, size = outputs
  logits = heatmap.permute(0, 2, 3, 1)
  target = targets["heatmap"]
  p = torch.sigmoid(logits)
  pos = (1 - p) ** 2 * -F.logsigmoid(logits)
  neg = (1 - target) ** 4 * p**2 * -F.logsigmoid(-logits)
  focal = torch.where(target == 1.0, pos, neg)
  num_positive = (target == 1.0).sum().clamp(min=1).float()
  heat_loss = torch.where(targets["ignore"][..., None], 0.0, focal).sum() / num_positive
  num_objects = targets["mask"].sum().clamp(min=1).float()

  def regression(pred, want):
    b, d = pred.shape[:2]
    flat = pred.reshape(b, d, -1).gather(2, targets["index"][:, None, :].expand(b, d, -1)).permute(0, 2, 1)
    l1 = (flat - want).abs().mean(-1)
    return torch.where(targets["mask"], l1, 0.0).sum() / num_objects

  return heat_loss + size_weight * regression(size, targets["size"]) + offset_weight * regression(offset,
                                                                                                   targets["offset"])


def make_step(config, batch, targets, *, device: str = "cpu", channels_last: bool = False, compile: bool = False):
  """Returns `(run(n) -> seconds for n train steps, num_params, setup seconds)` for `config.model` on `batch`."""
  torch.manual_seed(0)
  torch.set_num_threads(len(os.sched_getaffinity(0)))  # as many as XLA uses (both follow `taskset`)
  m = config.model
  model = CenterNet(num_classes=targets["heatmap"].shape[-1], depth=m.depth, width=m.width,
                    neck_features=tuple(m.neck_features), skip_connections=m.skip_connections,
                    head_features=m.head_features, size_scale=m.size_scale).to(device)
  if channels_last:
    model = model.to(memory_format=torch.channels_last)
    model.channels_last = True
  model.train()
  images = torch.from_numpy(np.asarray(batch["image"])).to(device)
  t = {k: torch.from_numpy(np.asarray(v)).to(device) for k, v in targets.items()}
  t["index"] = t["index"].long()
  optimizer = torch.optim.Adam(model.parameters(), lr=float(config.optim.learning_rate))
  clip = float(config.optim.grad_clip_norm or 0)

  def loss_fn(images):
    return centernet_loss(model(images), t, size_weight=m.size_weight, offset_weight=m.offset_weight)

  forward = torch.compile(loss_fn) if compile else loss_fn

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = forward(images)
    loss.backward()
    if clip:
      torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss

  def sync():
    if device != "cpu":
      torch.cuda.synchronize()

  start = time.perf_counter()
  for _ in range(3):
    loss = step()
  float(loss)
  setup_s = time.perf_counter() - start

  def run(n: int) -> float:
    sync()
    start = time.perf_counter()
    for _ in range(n):
      loss = step()
    float(loss)
    sync()
    return time.perf_counter() - start

  num_params = sum(p.numel() for p in model.parameters())
  return run, num_params, setup_s
