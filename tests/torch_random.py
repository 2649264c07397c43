"""Random weights for the official PyTorch modules, so parity tests exercise every tensor.

Official initialisations leave some tensors at zero (SAM's pos_embed and relative-position
tables, biases): a parity test with those would not notice a transposed or dropped tensor.
"""

import torch


def randomize_(module: torch.nn.Module, seed: int = 0, std: float = 0.1) -> torch.nn.Module:
  """Fills every floating parameter and buffer with N(0, std); norm scales with 1 + N(0, std)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.is_floating_point():
        continue
      noise = torch.randn(t.shape, generator=g) * std
      is_norm_scale = name.endswith(".weight") and t.ndim == 1
      t.copy_(noise + 1.0 if is_norm_scale else noise)
  return module.eval()
