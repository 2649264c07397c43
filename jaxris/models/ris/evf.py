"""EVF-SAM (hustvl/EVF-SAM, model/evf_sam.py): SAM prompted by a BEiT-3 early-fusion embedding.

  image (224x224 squash) + text --BEiT-3 (multiway, joint attention)--> token 0 (vision [CLS])
    --text_hidden_fcs: Linear(D, D), ReLU, Linear(D, 256)--> ONE sparse prompt token of SAM
  image (longest side 1024, padded) --SAM ViT--> image embedding
  dense prompt = no_mask_embed; SAM's mask decoder, single mask; logits > 0 is the mask.

Parameter paths are the official module names (``visual_model.{image_encoder,prompt_encoder,
mask_decoder}``, ``mm_extractor.beit3.*``, ``text_hidden_fcs.0.{0,2}``), so the converter in
``jaxris/weights/evf_sam.py`` is SAM's and BEiT-3's tables under a prefix.

Ablations of the EVF-SAM paper, as config fields whose defaults are the official model:
  fusion   "early" (official): BEiT-3 on [image, text] jointly;
           "text" (Table 3 "Text"): BEiT-3 on the text only (the image view is not used);
           "late": an image-only and a text-only BEiT-3 pass, their pooled features concatenated
           (the projector's first Linear then takes 2D inputs).
  pooling  (Table 5) "vision_cls" (official): token 0 after the final LayerNorm;
           "text_cls": the text's <s> token; "mean": the mean over every valid token.
           Late fusion pools each pass on its own: "mean" averages it, the [CLS] choices take
           each pass's first token (the vision [CLS] and the text <s>).
  multimask False (official EVF-SAM): SAM's first mask; True: SAM's three masks, the one with
           the highest predicted IoU is kept (EVF-SAM2's behaviour).

Deliberate differences: BEiT-3's ``vision_embed.mask_token`` is removed (EVF-SAM never masks
patches; the converter ignores it); several prompts per image are decoded in one batch against
a gathered image embedding (``decode(..., image_index=)``) where the official forward loops over
images. Parameters are float32; ``dtype`` (e.g. jnp.bfloat16) is the compute dtype. Nothing is
rematerialised and every shape is static, so the model jits once per input shape.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxris.models.beit3 import BEiT3, BEiT3Config
from jaxris.models.layers import dense
from jaxris.models.sam.sam import Sam, SamConfig, sam_config
from jaxris.ops.resize import resize_2d

FUSIONS = ("early", "text", "late")
POOLINGS = ("vision_cls", "text_cls", "mean")


@dataclasses.dataclass(frozen=True)
class EvfConfig:
  sam: SamConfig = sam_config("vit_h")         # the released checkpoints: SAM-H at 1024
  beit3: BEiT3Config = BEiT3Config.large()      # mm_extractor_scale "large"
  fusion: str = "early"
  pooling: str = "vision_cls"
  multimask: bool = False

  def __post_init__(self):
    if self.fusion not in FUSIONS:
      raise ValueError(f"unknown EVF fusion {self.fusion!r}; choose from {FUSIONS}")
    if self.pooling not in POOLINGS:
      raise ValueError(f"unknown EVF pooling {self.pooling!r}; choose from {POOLINGS}")
    if self.fusion == "text" and self.pooling == "vision_cls":
      raise ValueError("fusion='text' feeds BEiT-3 no image, so there is no vision [CLS]: "
                       "use pooling='text_cls' or 'mean'")

  @property
  def feature_dim(self) -> int:
    """Width of the projector's input: late fusion concatenates two pooled features."""
    return self.beit3.encoder_embed_dim * (2 if self.fusion == "late" else 1)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "EvfConfig":
    d = dict(d)
    return cls(sam=SamConfig.from_dict(d.pop("sam")), beit3=BEiT3Config.from_dict(d.pop("beit3")), **d)


class ReLU(nnx.Module):
  """A parameter-free slot, so the projector's Linears keep the official indices 0 and 2."""

  def __call__(self, x):
    return jax.nn.relu(x)


class MmExtractor(nnx.Module):
  """The official BEiT3Wrapper: only holds the encoder, at ``.beit3``."""

  def __init__(self, cfg: BEiT3Config, *, rngs: nnx.Rngs, dtype=None):
    self.beit3 = BEiT3(cfg, rngs=rngs, dtype=dtype)
    del self.beit3.vision_embed.mask_token  # read only for masked patches, which EVF never has


def _pool(x, pooling: str, first: int, valid):
  """x [N, T, D] -> [N, D]: token 0, token `first`, or the mean over `valid` [N, T] tokens."""
  if pooling == "mean":
    w = valid.astype(jnp.float32)[..., None]
    return (jnp.sum(x.astype(jnp.float32) * w, axis=1) / jnp.sum(w, axis=1)).astype(x.dtype)
  return x[:, first if pooling == "text_cls" else 0]


class EvfSam(nnx.Module):
  BATCH_INPUTS = ("image", "image_evf", "input_ids", "attention_mask")

  def __init__(self, cfg: EvfConfig, *, rngs: nnx.Rngs, dtype=None):
    self.cfg = cfg
    self.visual_model = Sam(cfg.sam, rngs=rngs, dtype=dtype)
    self.mm_extractor = MmExtractor(cfg.beit3, rngs=rngs, dtype=dtype)
    d, out = cfg.beit3.encoder_embed_dim, cfg.sam.prompt_embed_dim
    self.text_hidden_fcs = nnx.List([nnx.List([
        nnx.Linear(cfg.feature_dim, d, dtype=dtype, rngs=rngs, **dense("embed", "mlp")), ReLU(),
        nnx.Linear(d, out, dtype=dtype, rngs=rngs, **dense("mlp", "embed"))])])

  def features(self, images_evf, input_ids, attention_mask, *, rngs=None):
    """[N, feature_dim]: the pooled BEiT-3 feature of each (image, text) prompt."""
    beit3, pooling = self.mm_extractor.beit3, self.cfg.pooling
    valid_text = attention_mask.astype(bool)
    if self.cfg.fusion == "late":
      image = beit3(images=images_evf, rngs=rngs).encoder_out
      text = beit3(text_ids=input_ids, text_mask=attention_mask, rngs=rngs).encoder_out
      image_valid = jnp.ones(image.shape[:2], bool)
      return jnp.concatenate([_pool(image, pooling, 0, image_valid), _pool(text, pooling, 0, valid_text)], axis=-1)
    if self.cfg.fusion == "text":
      out = beit3(text_ids=input_ids, text_mask=attention_mask, rngs=rngs).encoder_out
      return _pool(out, pooling, 0, valid_text)
    out = beit3(text_ids=input_ids, images=images_evf, text_mask=attention_mask, rngs=rngs).encoder_out
    n_vision = out.shape[1] - input_ids.shape[1]
    valid = jnp.concatenate([jnp.ones((out.shape[0], n_vision), bool), valid_text], axis=1)
    return _pool(out, pooling, n_vision, valid)

  def prompt_embedding(self, images_evf, input_ids, attention_mask, *, rngs=None):
    """images_evf [N, 224, 224, 3], input_ids / attention_mask [N, T] -> [N, 1, prompt_dim]."""
    x = self.features(images_evf, input_ids, attention_mask, rngs=rngs)
    for layer in self.text_hidden_fcs[0]:
      x = layer(x)
    return x[:, None]

  def decode(self, image_embeddings, prompt, points=None, boxes=None, image_index=None):
    """The text token (+ SAM points / boxes, padded-input pixels) -> (low_res [N, M, 4g, 4g], iou [N, M]).

    image_embeddings [B, g, g, C]; prompt [N, 1, C]; points (coords [N, K, 2], labels [N, K]);
    boxes [N, 4]; image_index int [N] names each prompt's image (default: prompt i -> image i).
    M is 1: with ``multimask`` the mask of the highest predicted IoU of SAM's three is kept.
    """
    if image_index is not None:
      image_embeddings = jnp.take(image_embeddings, image_index, axis=0)
    sam = self.visual_model
    n = prompt.shape[0]
    sparse, dense = sam.prompt_encoder(points, boxes, None, batch_size=n)
    dtype = image_embeddings.dtype
    # The official prompt encoder appends text_embeds after the point and box tokens.
    sparse = jnp.concatenate([sparse.astype(dtype), prompt.astype(dtype)], axis=1)
    low_res, iou = sam.mask_decoder(image_embeddings, sam.prompt_encoder.get_dense_pe().astype(dtype), sparse,
                                    dense.astype(dtype), multimask_output=self.cfg.multimask)
    if self.cfg.multimask:
      best = jnp.argmax(iou, axis=-1)[:, None]
      low_res = jnp.take_along_axis(low_res, best[..., None, None], axis=1)
      iou = jnp.take_along_axis(iou, best, axis=1)
    return low_res, iou

  def __call__(self, images, images_evf, input_ids, attention_mask, *, rngs=None):
    """One prompt per image: images [B, S, S, 3] (SAM view, normalised, padded), images_evf
    [B, 224, 224, 3], input_ids / attention_mask [B, T] -> mask logits [B, S, S].

    The logits are SAM's low-res mask upsampled bilinearly (align_corners=False) to the padded
    S x S input, the first step of SAM's postprocess_masks; crop and resize them with
    ``jaxris.metrics.restore_original`` for the original image.
    """
    embeddings = self.visual_model.image_encoder(images)
    prompt = self.prompt_embedding(images_evf, input_ids, attention_mask, rngs=rngs)
    low_res, _ = self.decode(embeddings, prompt)
    return resize_2d(low_res[:, 0], images.shape[1:3], "bilinear")
