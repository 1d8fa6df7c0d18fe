"""The adapter kinds of METHODS.md as PyTorch modules: x [..., P] -> dy [..., Q].

Each mirrors its mode_jax adapter (mode_jax/adapters/) operation for
operation: routers, selections and gates in float32, one dense contraction
with the up-projection (no loop over experts, columns or tokens), the delta
cast back to the input dtype. Balancing biases are read, never updated
(inference). Top-k ties: torch.topk may keep either of two equal scores,
where JAX keeps the lower index; exact ties of float scores are rare, but a
near-tie within float rounding (~1e-7) may select differently from JAX.

Legend: D input features (P), F output features (Q), R rank, E experts,
G groups, p expert rank.
"""

from __future__ import annotations

import torch
from torch import nn


def _topk_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
  """float32 0/1 mask [..., N] of the k largest scores of each row."""
  idx = torch.topk(scores, k, dim=-1).indices
  return torch.zeros_like(scores, dtype=torch.float32).scatter_(-1, idx, 1.0)


class Adapter(nn.Module):
  """Holds the kind's tensors as frozen buffers and the description's scalars."""

  def __init__(self, tensors: dict, desc: dict):
    super().__init__()
    self.scale = float(desc["scale"])
    self.top_k = desc["top_k"]
    self.expert_rank = int(desc["expert_rank"])
    for name, value in tensors.items():
      self.register_buffer(name, value)

  def _up(self, u_tk: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """s * u @ lora_b viewed as [K, Q] (K = R, or E*R expert-major), in x's dtype."""
    b_kf = self.lora_b.reshape(u_tk.shape[-1], -1).to(x.dtype)
    return (self.scale * (u_tk.to(x.dtype) @ b_kf)).to(x.dtype)


class LoRA(Adapter):
  """dy = s * (x @ lora_a) @ lora_b."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self._up(x @ self.lora_a.to(x.dtype), x)


class MoLoRA(Adapter):
  """dy = s * sum_e softmax(x @ router)_e (x @ lora_a[e]) @ lora_b[e] (SD: one lora_a)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    w_te = torch.softmax(x.float() @ self.router.float(), dim=-1)
    a = self.lora_a.to(x.dtype)
    if a.dim() == 2:  # MoLoRA-SD: the down-projection is shared
      h = (x @ a).float()
      u_ter = w_te[..., :, None] * h[..., None, :]
    else:
      u_ter = w_te[..., :, None] * torch.einsum("...d,edr->...er", x, a).float()
    return self._up(u_ter.flatten(-2), x)


class MoDE(Adapter):
  """dy = s * sum_j h_j sum_e w[g(j), e] lora_b[e, j, :], w softmax (or top-k) per group."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    (_, g, e), p = self.router.shape, self.expert_rank
    xf = x.float()
    h_tgp = (xf @ self.lora_a.float()).unflatten(-1, (g, p))
    logits_tge = torch.einsum("...d,dge->...ge", xf, self.router.float())
    if self.top_k is not None and self.top_k < e:
      keep = _topk_mask(logits_tge, self.top_k) > 0
      logits_tge = logits_tge.masked_fill(~keep, float("-inf"))
    w_tge = torch.softmax(logits_tge, dim=-1)
    # u[t, e, g, p] = w[t, g, e] h[t, g, p]: expert-major rows of lora_b [E*R, Q].
    u_tegp = w_tge.transpose(-1, -2)[..., None] * h_tgp[..., None, :, :]
    return self._up(u_tegp.flatten(-3), x)


class FlyLoRA(Adapter):
  """dy = s * sum_{j in topk(h + bias)} h_j lora_b[j, :], h = x @ lora_a (frozen, sparse)."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h_tr = x.float() @ self.lora_a.float()
    mask_tr = _topk_mask(h_tr + self.bias.float(), self.top_k)
    return self._up(h_tr * mask_tr, x)


class SMoRA(Adapter):
  """dy = s * sum_{i in topk(sigmoid(x @ router) + bias)} g_i h_i lora_b[i, :]."""

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    xf = x.float()
    h_tr = xf @ self.lora_a.float()
    sb_tr = torch.sigmoid(xf @ self.router.float()) + self.bias.float()
    kept_tr = sb_tr * _topk_mask(sb_tr, self.top_k)
    g_tr = self.top_k * kept_tr / kept_tr.sum(dim=-1, keepdim=True)
    return self._up(g_tr * h_tr, x)


KINDS = {"lora": LoRA, "molora": MoLoRA, "molora_sd": MoLoRA, "mode": MoDE,
         "flylora": FlyLoRA, "smora": SMoRA}


class Adapted(nn.Module):
  """A frozen `base` projection plus an adapter delta: base(x) + adapter(x)."""

  def __init__(self, base: nn.Module, adapter: Adapter):
    super().__init__()
    self.base = base
    self.adapter = adapter

  @property
  def weight(self) -> torch.Tensor:
    return self.base.weight

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.base(x)
    return y + self.adapter(x).to(y.dtype)
