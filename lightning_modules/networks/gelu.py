"""GELU, tanh approximation (DiT's MLP activation), computed through a sigmoid on CPU.

    gelu_tanh(x) = 0.5 x (1 + tanh(z)) = x sigmoid(2 z),   z = sqrt(2 / pi) (x + 0.044715 x^3)

The two forms are the same function. ATen's CPU kernel evaluates the tanh with a vectorised
SLEEF tanh that costs about 3 ns per element on the AVX2 machines we train on (1.1 ms forward and
1.1 ms backward for one demo MLP activation, more than that MLP's matmuls; issue 24); a sigmoid
and a few multiply-adds cost a third of that, forward and backward. Off CPU, and under
`torch.compile` (which fuses the op itself), it is `F.gelu(x, approximate="tanh")`. The results
differ from ATen's by float rounding only (see tests/test_fast_paths.py).
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx, once_differentiable

TWO_C = 2 * math.sqrt(2 / math.pi)  # 2 z = TWO_C (x + KAPPA x^3)
KAPPA = 0.044715


class _SigmoidGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor) -> Tensor:
        two_z = (x * x).mul_(TWO_C * KAPPA).add_(TWO_C).mul_(x)
        s = torch.sigmoid(two_z)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> Tensor:
        # d/dx [x s(2z)] = s + x s (1 - s) d(2z)/dx,  d(2z)/dx = TWO_C (1 + 3 KAPPA x^2)
        x, s = ctx.saved_tensors
        x_dz = (x * x).mul_(3 * TWO_C * KAPPA).add_(TWO_C).mul_(x)
        slope = torch.addcmul(s, s, s, value=-1).mul_(x_dz).add_(s)
        return slope.mul_(grad)


def gelu_tanh(x: Tensor) -> Tensor:
    """`F.gelu(x, approximate="tanh")`, through a sigmoid on CPU in eager mode (module docstring)."""
    if x.device.type != "cpu":
        return F.gelu(x, approximate="tanh")
    if torch.compiler.is_compiling():  # one fused kernel either way; the sigmoid is cheaper
        return x * torch.sigmoid((x * x * (TWO_C * KAPPA) + TWO_C) * x)
    return _SigmoidGELU.apply(x)


class GELUTanh(nn.Module):
    """Drop-in for `nn.GELU(approximate="tanh")` (no parameters: state dicts are unchanged)."""

    def forward(self, x: Tensor) -> Tensor:
        return gelu_tanh(x)
