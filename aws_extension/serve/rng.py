"""The WebUI's noise, from its "Random number generator source" setting (override_settings.randn_source).

- GPU (the WebUI's default, and no "RNG" field in its infotext): drawn by torch on the device that generates, so on
  a CUDA endpoint the noise of a GPU WebUI; on a CPU-only machine the WebUI draws on the CPU, and so do we.
- CPU: torch's CPU generator, the same on every machine.
- NV: the WebUI's CPU emulation of what torch.randn draws on an NVIDIA GPU, so a GPU picture can be made again
  on any machine. torch's CUDA generator is Philox 4x32 with 10 rounds (Salmon et al., "Parallel random numbers:
  as easy as 1, 2, 3", SC 2011), keyed by the seed; element i of the n-th draw of a generator uses the counter
  (n, 0, i, 0), and its first two output words become one normal number by the Box-Muller transform in float32.

Each image has its own generator, as in the WebUI: its first draw is the image's starting noise, and every later
draw (an ancestral sampler's noise at each step) continues from it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

# Philox 4x32-10's round multipliers and key increments (the golden ratio and sqrt(3) - 1, as 32-bit fractions)
MULTIPLIERS = (np.uint64(0xD2511F53), np.uint64(0xCD9E8D57))
KEY_STEPS = (np.uint32(0x9E3779B9), np.uint32(0xBB67AE85))
ROUNDS = 10
LOW32 = np.uint64(0xFFFFFFFF)
# Box-Muller in float32, as curand computes it: u in (0, 1] from the first word, an angle from the second
SCALE = np.float32(2.3283064e-10)  # 2**-32
ANGLE_SCALE = np.float32(2.3283064e-10 * 6.2831855)  # 2**-32 * 2 pi


def philox(counter: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Philox 4x32-10 of counters (4, n) uint32 under keys (2, n) uint32: (4, n) uint32 random words."""
    c = [counter[i].astype(np.uint64) for i in range(4)]
    k0, k1 = key[0].astype(np.uint32), key[1].astype(np.uint32)
    for round_ in range(ROUNDS):
        if round_:
            k0, k1 = k0 + KEY_STEPS[0], k1 + KEY_STEPS[1]  # uint32 arithmetic wraps, as the algorithm's does
        p0, p1 = c[0] * MULTIPLIERS[0], c[2] * MULTIPLIERS[1]  # 32 x 32 -> 64 bits, exact in uint64
        c = [(p1 >> np.uint64(32)) ^ c[1] ^ k0.astype(np.uint64), p1 & LOW32,
             (p0 >> np.uint64(32)) ^ c[3] ^ k1.astype(np.uint64), p0 & LOW32]
    return np.stack(c).astype(np.uint32)


class PhiloxNormal:
    """Normal numbers as torch.randn draws them on a CUDA device from torch.Generator("cuda").manual_seed(seed)."""

    def __init__(self, seed: int):
        self.seed = int(seed)
        self.draws = 0  # the counter's first word: one more per call, as the WebUI's emulation does

    def randn(self, shape: Sequence[int]) -> torch.Tensor:
        n = int(np.prod(shape))
        counter = np.zeros((4, n), dtype=np.uint32)
        counter[0] = self.draws
        counter[2] = np.arange(n, dtype=np.uint32)
        self.draws += 1
        seed = np.uint64(self.seed)
        key = np.array([[seed & LOW32], [seed >> np.uint64(32)]], dtype=np.uint64).astype(np.uint32).repeat(n, axis=1)
        words = philox(counter, key)
        u = words[0].astype(np.float32) * SCALE + SCALE / np.float32(2)
        angle = words[1].astype(np.float32) * ANGLE_SCALE + ANGLE_SCALE / np.float32(2)
        normal = (np.sqrt(np.float32(-2.0) * np.log(u)) * np.sin(angle)).astype(np.float32)
        return torch.from_numpy(normal.reshape(tuple(shape)))


def slerp(t: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """The WebUI's variation-seed blend of two (C, H, W) noises: spherical, with the angle taken separately for each
    channel and column (the vectors run along the height axis). Nearly parallel noises blend linearly, with the
    weights the WebUI gives them there (t on the first noise)."""
    low_unit = low / torch.norm(low, dim=1, keepdim=True)
    high_unit = high / torch.norm(high, dim=1, keepdim=True)
    dot = (low_unit * high_unit).sum(1)
    if dot.mean() > 0.9995:
        return low * t + high * (1 - t)
    omega = torch.acos(dot)
    sin = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / sin).unsqueeze(1) * low + (torch.sin(t * omega) / sin).unsqueeze(1) * high


def draw_device(source: str, device: str) -> str:
    """Where torch draws for this source: the generating device for GPU, the CPU otherwise."""
    return device if source == "GPU" else "cpu"


class ImageNoise:
    """One generator per image. first(): each image's starting noise (with its variation seed blended in); next():
    each image's later draws, continuing from there (an ancestral sampler's step noise)."""

    def __init__(self, source: str, device: str, seeds: Sequence[int], subseeds: Optional[Sequence[int]] = None,
                 subseed_strength: float = 0.0):
        self.source, self.device = source, device
        self.seeds, self.subseeds, self.strength = list(seeds), list(subseeds or []), subseed_strength
        self._own = [self._generator(seed) for seed in self.seeds]

    def _generator(self, seed: int):
        if self.source == "NV":
            return PhiloxNormal(seed)
        return torch.Generator(draw_device(self.source, self.device)).manual_seed(int(seed))

    def _draw(self, generator, shape) -> torch.Tensor:
        if isinstance(generator, PhiloxNormal):
            return generator.randn(shape)
        return torch.randn(tuple(shape), generator=generator, device=generator.device)

    def first(self, shape: Sequence[int]) -> torch.Tensor:
        noises = []
        for i, generator in enumerate(self._own):
            noise = self._draw(generator, shape)
            if self.strength:
                subseed = self.subseeds[i] if i < len(self.subseeds) else 0
                noise = slerp(self.strength, noise, self._draw(self._generator(subseed), shape).to(noise.device))
            noises.append(noise)
        return torch.stack(noises)

    def next(self, shape: Sequence[int]) -> torch.Tensor:
        """Each image's next draw from its own generator (a sampler's step noise), NV included."""
        return torch.stack([self._draw(g, shape).cpu() for g in self._own])
