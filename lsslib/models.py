"""The ConvNet family as a pure function of one flat parameter vector.

Trajectory matching differentiates through a student whose parameters are a
single flat vector (MTT's ``ReparamModule``), experts and evaluation nets are
trained many at a time with :func:`torch.func.vmap`; both want the network as a
function ``logits = forward(flat, x)``. :class:`ConvNetSpec` describes the
architecture and slices the flat vector into views; :func:`convnet_forward`
runs it. Layout and initialisation match the module ConvNet of the DC/DSA/MTT
code base (``utils.ConvNet``): per block Conv 3x3 (pad 1, bias) -> norm -> ReLU ->
pool, then one Linear layer; PyTorch's default uniform initialisation.

ConvNetD3 (book/choices.md §9): depth 3, width 128, instance norm (GroupNorm with one
group per channel, affine), average pooling: 320,010 parameters for 10 classes,
504,420 for 100.

One-channel input (Fashion-MNIST's 1 x 28 x 28) follows the reference: its first
convolution pads by 3 instead of 1 (``padding=3 if channel == 1 and d == 0``), so a
28x28 image is a 32x32 map after it and the blocks see CIFAR's sides (features
4x4 after three poolings, as the reference's ``im_size`` 28 -> 32).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .config import ModelConfig

__all__ = [
    "ConvNetSpec",
    "convnet_forward",
    "init_flat",
    "batched_forward",
    "compiled_forward",
    "flops_per_image",
]


@dataclass(frozen=True)
class ConvNetSpec:
    """Architecture of a ConvNet and the layout of its flat parameter vector.

    Attributes:
        channels: input channels C.
        side: input side H = W (pixels).
        num_classes: K.
        depth, width, norm, pooling: see :class:`~lsslib.config.ModelConfig`.
    """

    channels: int
    side: int
    num_classes: int
    depth: int = 3
    width: int = 128
    norm: str = "instancenorm"
    pooling: str = "avgpool"

    @classmethod
    def from_config(
        cls, cfg: ModelConfig, *, channels: int, side: int, num_classes: int
    ) -> ConvNetSpec:
        """Build from a :class:`~lsslib.config.ModelConfig` and the data shape.

        Raises:
            ValueError: the depth pools the image below 1 pixel.
        """
        spec = cls(
            channels, side, num_classes, cfg.net_depth, cfg.net_width, cfg.net_norm, cfg.net_pooling
        )
        if spec.feature_side < 1:
            raise ValueError(
                f"invalid parameter net_depth={cfg.net_depth}: allowed at most "
                f"{int(math.log2(side + 2 * (spec.first_padding - 1)))} for {side}x{side} "
                f"images with {channels} channel(s) and pooling"
            )
        return spec

    @property
    def first_padding(self) -> int:
        """Padding of the first convolution: 3 for one input channel (the reference's
        ``ConvNet``), else 1 (every later convolution pads by 1)."""
        return 3 if self.channels == 1 else 1

    @property
    def feature_side(self) -> int:
        """Side of the last block's output (the first convolution widens the image by
        ``2 * (first_padding - 1)``; each pooling halves, rounding down)."""
        side = self.side + 2 * (self.first_padding - 1)
        return side if self.pooling == "none" else side // 2**self.depth

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """``(name, shape)`` of every parameter, in flat-vector order."""
        out: list[tuple[str, tuple[int, ...]]] = []
        cin = self.channels
        for d in range(self.depth):
            out.append((f"conv{d}.weight", (self.width, cin, 3, 3)))
            out.append((f"conv{d}.bias", (self.width,)))
            if self.norm != "none":
                out.append((f"norm{d}.weight", (self.width,)))
                out.append((f"norm{d}.bias", (self.width,)))
            cin = self.width
        feat = self.width * self.feature_side**2
        out.append(("fc.weight", (self.num_classes, feat)))
        out.append(("fc.bias", (self.num_classes,)))
        return out

    @property
    def num_params(self) -> int:
        """Length P of the flat parameter vector."""
        return sum(math.prod(s) for _, s in self.shapes())

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat`` (float ``[P]``) shaped as :meth:`shapes`.

        One ``split`` rather than a slice per parameter: autograd then joins the
        parameters' gradients with one ``cat`` instead of materialising a zero
        ``[P]`` vector per parameter and summing them (same values; with batches of
        10 images that was a noticeable share of a training step).
        """
        shapes = self._shapes()
        parts = flat.split([math.prod(s) for s in shapes])
        return [t.view(s) for t, s in zip(parts, shapes, strict=True)]

    @functools.cache  # noqa: B019 -- frozen dataclass: hashable, and few specs per process
    def _shapes(self) -> tuple[tuple[int, ...], ...]:
        return tuple(s for _, s in self.shapes())

    def describe(self) -> str:
        """A short name for tables, e.g. ``ConvNetD3 (width 128, instancenorm, avgpool)``."""
        return f"ConvNetD{self.depth} (width {self.width}, {self.norm}, {self.pooling})"

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k)
            for k in ("channels", "side", "num_classes", "depth", "width", "norm", "pooling")
        }


def init_flat(
    spec: ConvNetSpec, generator: torch.Generator | None = None, device: str | torch.device = "cpu"
) -> Tensor:
    """A freshly initialised flat parameter vector, float32 ``[P]``.

    PyTorch's defaults for Conv2d / Linear (uniform in +-1/sqrt(fan_in) for weight
    and bias, i.e. ``kaiming_uniform_(a=sqrt(5))``) and ones/zeros for the norm's
    affine parameters, drawn from ``generator`` on the CPU so that the same seed
    gives the same network on every device.
    """
    parts = []
    fan_in = 1
    for name, shape in spec.shapes():
        n = math.prod(shape)
        if name.startswith("norm"):
            parts.append(torch.ones(n) if name.endswith("weight") else torch.zeros(n))
            continue
        if name.endswith("weight"):
            fan_in = math.prod(shape[1:])  # the bias that follows shares its layer's fan-in
        bound = 1.0 / math.sqrt(fan_in)
        parts.append((torch.rand(n, generator=generator) * 2 - 1) * bound)
    return torch.cat(parts).to(device)


def convnet_forward(spec: ConvNetSpec, flat: Tensor, x: Tensor) -> Tensor:
    """Logits of the ConvNet with parameters ``flat`` on images ``x``.

    Args:
        spec: the architecture.
        flat: float32 ``[P]``.
        x: float32 ``[B, C, H, W]``.

    Returns:
        float32 ``[B, K]``.
    """
    params = spec.unflatten(flat)
    i = 0
    h = x
    for d in range(spec.depth):
        h = F.conv2d(h, params[i], params[i + 1], padding=spec.first_padding if d == 0 else 1)
        i += 2
        if spec.norm == "instancenorm":
            h = F.group_norm(h, spec.width, params[i], params[i + 1])
            i += 2
        elif spec.norm == "batchnorm":
            # Batch statistics at train and test time (no running averages).
            h = F.batch_norm(h, None, None, params[i], params[i + 1], training=True)
            i += 2
        h = F.relu(h)
        if spec.pooling == "avgpool":
            h = F.avg_pool2d(h, 2)
        elif spec.pooling == "maxpool":
            h = F.max_pool2d(h, 2)
    return F.linear(h.flatten(1), params[i], params[i + 1])


def batched_forward(spec: ConvNetSpec, flats: Tensor, x: Tensor) -> Tensor:
    """Many networks at once: ``flats`` float32 ``[E, P]``, ``x`` ``[E, B, C, H, W]`` -> ``[E, B, K]``.

    Uses :func:`torch.func.vmap`, which turns the E convolutions into one grouped
    convolution.
    """
    return torch.func.vmap(lambda w, xb: convnet_forward(spec, w, xb))(flats, x)


@functools.lru_cache(maxsize=32)
def compiled_forward(
    spec: ConvNetSpec, backend: str = "inductor", batched: bool = True
) -> Callable[[ConvNetSpec, Tensor, Tensor], Tensor]:
    """:func:`batched_forward` (or :func:`convnet_forward`) through :func:`torch.compile`.

    An optional GPU speed path, off unless asked for (``train_nets(compile_backend=...)``,
    the benchmarks' ``--compile``): the compiler fuses the element-wise work
    around the convolutions. First-order training only -- ``torch.compile`` does
    not support the double backward of trajectory matching. One compiled
    function per ``(spec, backend, batched)``, shapes specialised (``dynamic=False``).

    Returns:
        A function with the signature of :func:`batched_forward` (``spec`` is ignored).
    """
    if batched:
        fn = torch.compile(lambda w, x: batched_forward(spec, w, x), backend=backend, dynamic=False)
    else:
        fn = torch.compile(lambda w, x: convnet_forward(spec, w, x), backend=backend, dynamic=False)
    return lambda _spec, w, x: fn(w, x)


def flops_per_image(spec: ConvNetSpec) -> int:
    """Multiply-adds x 2 of one forward pass on one image (convs and the linear layer)."""
    total, side, cin = 0, spec.side + 2 * (spec.first_padding - 1), spec.channels
    for _ in range(spec.depth):
        total += 2 * side * side * spec.width * cin * 9
        cin = spec.width
        if spec.pooling != "none":
            side //= 2
    total += 2 * spec.width * spec.feature_side**2 * spec.num_classes
    return total
