"""Official MobileSAM modules (mobile_sam, the oracle) with random or real weights, and their conversions."""

import numpy as np
import torch
from flax import nnx
from mobile_sam.build_sam import build_sam_vit_t
from mobile_sam.modeling.tiny_vit_sam import TinyViT as OfficialTinyViT

from jaxris.models.sam.tiny_vit import TinyViT
from jaxris.weights import sam as sam_weights
from jaxris.weights import store, tiny_vit
from jaxris.weights.mapping import convert
from jaxris.weights.random_torch import randomize_

# The TinyViT arguments of the official build_sam_vit_t.
MOBILE_SAM_TINY_VIT = dict(in_chans=3, num_classes=1000, embed_dims=[64, 128, 160, 320], depths=[2, 2, 6, 2],
                           num_heads=[2, 4, 5, 10], window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, drop_rate=0.0,
                           drop_path_rate=0.0, use_checkpoint=False, mbconv_expand_ratio=4.0, local_conv_size=3,
                           layer_lr_decay=0.8)


def randomize_all_(module, seed: int):
  """Every tensor random (jaxris.weights.random_torch), batch-norm variances made positive, eval mode.

  ``eval()`` last: the official TinyViT attention caches its bias table (``ab``) in ``train(False)``.
  """
  randomize_(module, seed)
  g = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for name, buf in module.named_buffers():
      if name.endswith("running_var"):
        buf.copy_(0.5 + torch.rand(buf.shape, generator=g))
  return module.eval()


def official_tiny_vit(img_size=1024, seed=0):
  """MobileSAM's TinyViT (official code) at `img_size` (an int, or (h, w)), every tensor random."""
  torch.manual_seed(seed)
  return randomize_all_(OfficialTinyViT(img_size=img_size, **MOBILE_SAM_TINY_VIT), seed)


def official_mobile_sam(seed=0):
  """The official build_sam_vit_t() with every tensor random."""
  torch.manual_seed(seed)
  return randomize_all_(build_sam_vit_t(), seed)


def official_mobile_sam_from(checkpoint: str):
  """The official model with the real weights: build_sam_vit_t, the state_dict read safely, then eval().

  build_sam_vit_t(checkpoint=...) itself calls eval() *before* loading, which leaves the attention
  bias cache ``ab`` at its zero initialisation; the official README calls eval() again after building.
  """
  model = build_sam_vit_t()
  model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True))
  return model.eval()


def official_features(encoder, x: torch.Tensor) -> torch.Tensor:
  """The official TinyViT.forward_features with the final grid read from the input size.

  The official code reshapes to a hard-coded 64x64 grid (1024 px input only); everything else is
  the official modules as they are.
  """
  with torch.no_grad():
    y = encoder.layers[0](encoder.patch_embed(x))
    for layer in encoder.layers[1:]:
      y = layer(y)
    h, w = -(-x.shape[2] // 16), -(-x.shape[3] // 16)
    return encoder.neck(y.view(y.shape[0], h, w, y.shape[2]).permute(0, 3, 1, 2))


def sam_from_torch(model):
  """Our Sam from an official MobileSAM state_dict (converted as jaxris.weights.sam.from_torch does)."""
  cfg, params = sam_weights.convert_state_dict({k: v.numpy() for k, v in model.state_dict().items()})
  sam = sam_weights.abstract_model(cfg)  # no random init: every value is assigned
  store.assign_params(sam, {k: np.asarray(v) for k, v in dict(params).items()})
  return sam


def encoder_from_torch(encoder) -> TinyViT:
  """Our TinyViT from an official TinyViT's state_dict through the SAM converter's rules; strict.

  (Our TinyViT reads every grid from its input, so the input size the official one was built for
  does not matter.)
  """
  prefix = "image_encoder."
  sd = {prefix + k: v.numpy() for k, v in encoder.state_dict().items()}
  cfg = sam_weights.infer_config(sd)
  shapes = {k: s for k, s in store.param_shapes(sam_weights.abstract_model(cfg)).items() if k.startswith(prefix)}
  params = convert(sd, sam_weights.RULES, shapes, ignore=tiny_vit.IGNORE, what="TinyViT state_dict")
  model = nnx.eval_shape(lambda: TinyViT(cfg.encoder, rngs=nnx.Rngs(0)))  # no random init: every value is assigned
  store.assign_params(model, {k[len(prefix):]: np.asarray(v) for k, v in dict(params).items()})
  return model
