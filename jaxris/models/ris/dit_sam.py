"""Text-prompted SAM as in DIT-SAM (wysnzzzz/DIT, models/*/net.py): the model all DIT rows share.

  BERT tokens --(text_proj: Linear(text_dim, 256))--> sparse prompt tokens of SAM's mask decoder
  image --(SAM ViT, global attention; E-DIT / L-DIT also inject the text, see dit.py)--> embedding
  dense prompt = no_mask_embed; single mask; x4 bilinear (align_corners=True) to the input size.

Table 1's "Default" is scheme="default"; "Add N decoder layers" adds N two-way layers to the mask
decoder (new layers randomly initialised). The official code reads BERT's hidden state after its
*first* layer (``bert_layer=1``); ``bert_layer=-1`` takes the last one.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import nnx

from jaxris.models.bert import BertConfig, BertModel
from jaxris.models.layers import dense
from jaxris.models.ris.dit_encoder import TextInjectedEncoder
from jaxris.models.sam.mask_decoder import MaskDecoder
from jaxris.models.sam.prompt_encoder import PromptEncoder
from jaxris.models.sam.sam import SamConfig
from jaxris.ops.resize import resize_2d


@dataclasses.dataclass(frozen=True)
class RisConfig:
  scheme: str = "ldit"                 # a key of dit.SCHEMES: default, edit, ldit, token_*, crossatt*
  sam: SamConfig = SamConfig()         # shapes of the SAM checkpoint (1024 input, 64x64 tables)
  bert: BertConfig = BertConfig()
  extra_decoder_layers: int = 0        # Table 1 "Add N"
  bert_layer: int = 1                  # index into BERT's hidden_states (0 = embeddings)
  slot_dropout: float = 0.1
  remat: bool = False                  # recompute ViT blocks in the backward pass (memory for compute)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "RisConfig":
    d = dict(d)
    return cls(sam=SamConfig.from_dict(d.pop("sam")), bert=BertConfig(**d.pop("bert")), **d)


class RisSam(nnx.Module):
  BATCH_INPUTS = ("image", "input_ids", "attention_mask")  # the batch fields __call__ takes, in order

  def __init__(self, cfg: RisConfig, *, rngs: nnx.Rngs, dtype=None):
    self.cfg = cfg
    sam, grid = cfg.sam, cfg.sam.encoder.grid
    text_dim = cfg.bert.hidden_size
    self.visual_encoder = TextInjectedEncoder(sam.encoder, cfg.scheme, text_dim, cfg.slot_dropout, cfg.remat,
                                              rngs=rngs, dtype=dtype)
    self.prompt_encoder = PromptEncoder(sam.prompt_embed_dim, (grid, grid), (sam.encoder.img_size,) * 2,
                                        sam.mask_in_chans, rngs=rngs)
    self.mask_decoder = MaskDecoder(sam.prompt_embed_dim, sam.decoder_depth + cfg.extra_decoder_layers,
                                    sam.decoder_mlp_dim, sam.decoder_num_heads, sam.num_multimask_outputs,
                                    sam.iou_head_depth, sam.iou_head_hidden_dim, rngs=rngs, dtype=dtype)
    self.lang_encoder = BertModel(cfg.bert, rngs=rngs, dtype=dtype)
    self.text_proj = nnx.Linear(text_dim, sam.prompt_embed_dim, dtype=dtype, rngs=rngs, **dense("embed", "mlp"))

  def encode_text(self, input_ids, attention_mask, *, rngs=None):
    out = self.lang_encoder(input_ids, attention_mask, rngs=rngs)
    return out.hidden_states[self.cfg.bert_layer]

  def __call__(self, images, input_ids, attention_mask, *, rngs: nnx.Rngs | None = None):
    """images [B, S, S, 3] normalised and padded; input_ids, attention_mask [B, T] -> mask logits [B, S, S].

    ``rngs`` with a 'dropout' stream turns on the training-time dropout (text slots and BERT).
    """
    text = self.encode_text(input_ids, attention_mask, rngs=rngs)
    embedding = self.visual_encoder(images, text, rngs=rngs)
    b, h, w, c = embedding.shape
    sparse = self.text_proj(text)
    # DIT keeps SAM's prompt encoder at 1024/64x64; at 512 its dense prompt (a constant) and the
    # positional encoding are taken at the 32x32 grid.
    dense = jnp.broadcast_to(self.prompt_encoder.no_mask_embed.weight[...][0], (b, h, w, c))
    image_pe = self.prompt_encoder.pe_layer.grid((h, w))[None]
    low_res, _ = self.mask_decoder(embedding, image_pe, sparse.astype(embedding.dtype), dense.astype(embedding.dtype),
                                   multimask_output=False)
    return resize_2d(low_res[:, 0], images.shape[1:3], "bilinear_align_corners")
