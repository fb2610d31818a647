"""The autograd functions of autopoietic attention: the refinement's elementwise MLP, which recomputes
instead of storing, and the temperature's straight-through clamp."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class ElementwiseMLP(torch.autograd.Function):
    """f(s) = sum_k w2[k] * gelu(w1[k] * s + b1[k]) on every element of s, a 1 -> h -> 1 MLP.

    Broadcasting s to [..., h] would store h copies of an attention-sized tensor for backward; this
    keeps only s and recomputes, one hidden unit at a time (h is small), which is 4x faster on CPU.
    """

    @staticmethod
    def forward(ctx, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(s, w1, b1, w2)
        out = F.gelu(torch.addcmul(b1[0], s, w1[0])).mul_(w2[0])
        for k in range(1, w1.shape[0]):
            out.addcmul_(F.gelu(torch.addcmul(b1[k], s, w1[k])), w2[k])
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        s, w1, b1, w2 = ctx.saved_tensors
        grad, flat_s = grad.contiguous(), s.reshape(-1)
        grad_s = torch.zeros_like(s)
        grad_w1, grad_b1, grad_w2 = torch.empty_like(w1), torch.empty_like(b1), torch.empty_like(w2)
        for k in range(w1.shape[0]):  # reductions as dot products: no temporaries
            z = torch.addcmul(b1[k], s, w1[k])
            grad_w2[k] = torch.dot(grad.reshape(-1), F.gelu(z).reshape(-1))
            u = torch.ops.aten.gelu_backward(grad, z)  # grad * gelu'(z)
            grad_b1[k] = w2[k] * u.sum()
            grad_w1[k] = w2[k] * torch.dot(u.reshape(-1), flat_s)
            grad_s.addcmul_(u, w1[k] * w2[k])
        return grad_s, grad_w1, grad_b1, grad_w2


class ClampWithGradient(torch.autograd.Function):
    """clamp(x, low, high) in the forward, the identity in the backward (a straight-through clamp).

    A plain clamp gives 0 gradient outside the range, for good: tau starts on its lower bound, its first
    gradient asks for a sharper softmax, Adam steps it to 0.98, and it never learned again. Passing only
    the gradient that points back inside would not be linear in the loss, so gradient accumulation and
    DDP (which sum the gradients of micro-batches and ranks) would train it differently from one batch."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, low: float, high: float) -> torch.Tensor:
        return x.clamp(low, high)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None, None
