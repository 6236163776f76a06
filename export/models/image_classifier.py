"""A small image classifier (pure PyTorch, no torchvision): proof that the pipeline is not
text-only.

``build()`` returns a residual CNN (3x32x32 -> 10 logits) trained for a few seconds on a
synthetic task with a known answer: the orientation of a noisy sinusoidal grating (10
orientations). Export it like any user model::

    tritonstack export --model export.models.image_classifier:build \\
        --input image:float32:3x32x32 --output logits --name image_classifier --task classifier

``gratings(n)`` makes labelled images, e.g. for ``--sample-data`` (``save_sample_data``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

NAME = "image_classifier"
CLASSES = 10
SIZE = 32


def gratings(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` RGB images of a grating at one of ``CLASSES`` orientations, plus noise; labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, size=n)
    angles = labels * np.pi / CLASSES + rng.uniform(-0.05, 0.05, size=n)
    freq = rng.uniform(0.25, 0.45, size=n)
    phase = rng.uniform(0, 2 * np.pi, size=n)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    proj = np.cos(angles)[:, None, None] * xx + np.sin(angles)[:, None, None] * yy
    wave = np.sin(freq[:, None, None] * proj + phase[:, None, None])
    colour = rng.uniform(0.5, 1.0, size=(n, 3, 1, 1))
    images = colour * wave[:, None] + 0.3 * rng.standard_normal((n, 3, SIZE, SIZE))
    return images.astype(np.float32), labels.astype(np.int64)


class Block(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.skip = (
            nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                          nn.BatchNorm2d(channels_out))
            if stride != 1 or channels_in != channels_out
            else nn.Identity()
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.skip(x))


class SmallResNet(nn.Module):
    """stem 16 -> blocks 16 / 32 (stride 2) / 64 (stride 2) -> global average pool -> linear."""

    def __init__(self, classes: int = CLASSES) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16))
        self.blocks = nn.Sequential(Block(16, 16, 1), Block(16, 32, 2), Block(32, 64, 2))
        self.head = nn.Linear(64, classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.blocks(torch.relu(self.stem(image)))
        logits: torch.Tensor = self.head(x.mean(dim=(2, 3)))
        return logits


def train(model: SmallResNet, steps: int = 150, batch: int = 64, seed: int = 0) -> float:
    """A few seconds of Adam on fresh gratings; returns accuracy on held-out gratings."""
    torch.manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, labels = gratings(steps * batch, seed=seed)
    model.train()
    for step in range(steps):
        x = torch.from_numpy(images[step * batch : (step + 1) * batch])
        y = torch.from_numpy(labels[step * batch : (step + 1) * batch])
        loss = nn.functional.cross_entropy(model(x), y)
        optimiser.zero_grad()
        torch.autograd.backward(loss)
        optimiser.step()
    model.eval()
    test_x, test_y = gratings(512, seed=seed + 1)
    with torch.inference_mode():
        predicted = model(torch.from_numpy(test_x)).argmax(dim=1).numpy()
    return float((predicted == test_y).mean())


def build(steps: int = 150) -> SmallResNet:
    """The factory ``tritonstack export --model`` calls: a trained, eval-mode classifier."""
    torch.manual_seed(0)
    model = SmallResNet()
    model.accuracy = train(model, steps)  # type: ignore[assignment]
    return model.eval()


def save_sample_data(path: Path, n: int = 64, seed: int = 7) -> Path:
    """Real-looking inputs for the parity check (``--sample-data``)."""
    images, _ = gratings(n, seed)
    np.savez(path, image=images)
    return path
