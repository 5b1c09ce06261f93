"""The course's convolution arithmetic: output sizes and receptive fields.

Output size of a convolution or pooling window over N inputs with filter F, zero padding P on
each side and stride S: (N + 2P - F) / S + 1 (with dilation D the filter spans D(F - 1) + 1).
A layer needs that division to be exact only when it must cover the input with no remainder
(`exact=True`); frameworks otherwise floor it.

Receptive field of a stack: each layer with filter F, stride S, dilation D widens the field by
D(F - 1) times the product of the strides below it (the "jump"); three stacked 3x3 stride-1
convolutions therefore see 1 + 2 + 2 + 2 = 7 pixels, the field of one 7x7 with fewer weights.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable


def conv_output_size(
    size: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    exact: bool = False,
) -> int:
    """(N + 2P - F_eff) / S + 1 for one spatial dimension, F_eff = D(F - 1) + 1.

    Raises ValueError when the window does not fit, or, with `exact=True`, when the stride
    does not divide the remaining span (the layer would silently drop input pixels)."""
    for name, value, minimum in (
        ('size', size, 1),
        ('kernel', kernel, 1),
        ('stride', stride, 1),
        ('padding', padding, 0),
        ('dilation', dilation, 1),
    ):
        if value < minimum:
            raise ValueError(f'{name} must be >= {minimum}, got {value}')
    effective = dilation * (kernel - 1) + 1
    span = size + 2 * padding - effective
    if span < 0:
        raise ValueError(
            f'a {kernel}x{kernel} window (dilation {dilation}, spanning {effective}) '
            f'does not fit {size} inputs with padding {padding}'
        )
    if exact and span % stride:
        raise ValueError(
            f'(N + 2P - F) / S = ({size} + 2*{padding} - {effective}) / {stride} is '
            f'not an integer: the last {span % stride} input(s) would be skipped'
        )
    return span // stride + 1


@dataclasses.dataclass(frozen=True)
class Window:
    """One conv or pooling layer along one spatial dimension."""

    kernel: int
    stride: int = 1
    dilation: int = 1


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Field: input pixels one output unit sees; jump: input pixels between adjacent units."""

    size: int
    jump: int

    def through(self, window: Window) -> ReceptiveField:
        """The field after one more layer on top."""
        return ReceptiveField(
            self.size + window.dilation * (window.kernel - 1) * self.jump, self.jump * window.stride
        )


def receptive_field(windows: Iterable[Window | tuple[int, ...]]) -> ReceptiveField:
    """Receptive field of a stack of layers, first layer first. Tuples are read as
    (kernel, stride, dilation) with stride and dilation optional."""
    field = ReceptiveField(1, 1)
    for window in windows:
        if not isinstance(window, Window):
            window = Window(*window)
        field = field.through(window)
    return field
