"""Random weights for official PyTorch modules, so parity checks exercise every tensor.

Official initialisations leave some tensors at zero (SAM's pos_embed and relative-position
tables, biases): a parity check with those would not notice a transposed or dropped tensor.
Used by the tests and by ``python -m jaxris.selfcheck``; PyTorch is imported only when called.
"""


def randomize_(module, seed: int = 0, std: float = 0.1):
  """Fills every floating parameter and buffer with N(0, std); norm scales with 1 + N(0, std)."""
  import torch

  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, t in module.state_dict().items():
      if not t.is_floating_point():
        continue
      noise = torch.randn(t.shape, generator=g) * std
      is_norm_scale = name.endswith(".weight") and t.ndim == 1
      t.copy_(noise + 1.0 if is_norm_scale else noise)
  return module.eval()
