"""The whole SAM+CLIP bridge (shared/specs/bridge.md §3): image + text -> SAM mask logits (+ no-target logits).

  image (SAM view, normalised) --SAM encoder (frozen)--> E [B, g, g, C]                  g = SAM grid (64)
        --undo SAM norm, /255, torch bicubic to the CLIP size, CLIP mean/std-->
        --CLIP vision tower (frozen), last block before post_layernorm, class token dropped--> [B, n², D_clip]
  text --BERT--> [B, T, D_bert] --lang_mlp--> L [B, T, C]; L_cls = L[:, 0]
  PWAM(CLIP patches, L, mask) -> [B, n, n, C] -> CLIP-SFP -> p2 (2n)², p3 n², p4 (n/2)²
  pixel decoder -> p_dense [B, 2n, 2n, C], multi-scale [(n/2)², n², (2n)²]
  SAM-SFP(E) -> S4 g², S5 (g/2)², S6 (g/4)²
  DFAM(multi-scale, [S6, S5, S4], E, L_cls, sot_vec, T) -> instance predictions (training) + no-target logits
  p_sparse = Txt2txt(query, L): query = L_cls ("bert_cls", the default) or clip_mlpl(T[category]) ("gt_category")
  SAM mask decoder(E + bicubic(p_dense -> g²), PE, [iou, mask x4, p_sparse]) -> mask token 0 (4g)²
       -> bilinear to the input size: the logits.

Every spatial size follows from the config: n = clip.image_size / clip.patch_size (24 at full size),
g = sam.encoder.img_size / patch_size (64). Full size is the official model (SAM ViT-B, CLIP
ViT-L/14-336, bert-base-uncased, 256-wide prompts).

``sparse_query="gt_category"`` is the official RefCOCO configs' ``TXT2TXT.IO='bert_coco'``: the sparse
prompt's query is the CLIP text embedding of the target's *annotated* category, at test time too. It
leaks the ground truth: it is an oracle, kept only to reproduce the paper's numbers on purpose.

Constants (buffers, not trained): ``class_text`` T [num_classes, clip_text_dim] (the CLIP text
embeddings of the category names plus "background", last), ``sot_vec`` [clip_text_dim] (CLIP's
start-of-text feature, the same for every caption) and ``category_rows`` (a dataset's category id ->
its row of T; unknown ids -> "background"). jaxris/weights/bridge.py computes them from a CLIP text
tower at conversion time; a model built without them holds fixed random ones.

Outputs: ``__call__`` (evaluation, prediction) returns the logits [B, S, S], or with the no-target
head a dict {"logits", "no_target" (logits [B, 2]; argmax 1 = no target)}. ``train_outputs`` returns
everything the loss needs (``jaxris.bridge_losses.bridge_loss``): ``sam_logits`` and DFAM's dict.
Parameter paths follow the official module names: ``sam_encoder`` (SAM's image_encoder),
``prompt_encoder``, ``mask_decoder``, ``clip``, ``bert``, ``lang_mlp``, ``clip_mlpl``, ``adaptor_clip``
(PWAM), ``backbone_clip`` / ``backbone_sam`` (the pyramids), ``pixel_decoder``, ``dfam``, ``txt2txt``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.models.bert import BertConfig, BertModel
from jaxris.models.clip import PRESETS, CLIPVisionConfig, CLIPVisionModel
from jaxris.models.ris.bridge.dfam import Dfam
from jaxris.models.ris.bridge.pixel_decoder import PixelDecoder
from jaxris.models.ris.bridge.pwam import MMLayer
from jaxris.models.ris.bridge.pyramids import SimpleFeaturePyramid
from jaxris.models.ris.bridge.txt2txt import Txt2txt, text_projection
from jaxris.models.sam.image_encoder import ImageEncoderViT
from jaxris.models.sam.mask_decoder import MaskDecoder
from jaxris.models.sam.prompt_encoder import Buffer, PromptEncoder
from jaxris.models.sam.sam import PIXEL_MEAN, PIXEL_STD, SamConfig, sam_config
from jaxris.ops.resize import resize_2d

__all__ = ["BridgeConfig", "BridgeSam", "CLIP_L14_336", "SPARSE_QUERIES", "CLIP_MEAN", "CLIP_STD"]

SPARSE_QUERIES = ("bert_cls", "gt_category")  # gt_category: an ORACLE (reads the annotated category)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_L14_336 = PRESETS["vit_l_14_336"].vision


@dataclasses.dataclass(frozen=True)
class BridgeConfig:
  sam: SamConfig = sam_config("vit_b")
  clip: CLIPVisionConfig = CLIP_L14_336
  bert: BertConfig = BertConfig(add_pooling_layer=False)
  clip_sfp_dim: int = 768             # CLIP-SFP output width (pixel decoder input)
  pixel_layers: int = 6
  pixel_heads: int = 8
  pixel_points: int = 4
  pixel_ffn: int = 1024
  dfam_queries: int = 100
  dfam_heads: int = 8
  dfam_ffn: int = 1024
  dfam_layers: int = 3
  txt_heads: int = 8
  txt_ffn: int = 1024
  clip_text_dim: int = 768            # CLIP text width (T and sot_vec): ViT-L/14's 768
  num_classes: int = 134              # rows of T: COCO panoptic's 133 + "background"
  num_category_ids: int = 201         # size of the dataset-category-id -> row table (COCO ids < 201)
  sparse_query: str = "bert_cls"      # "bert_cls" (leak-free default) | "gt_category" (ORACLE)
  no_target_head: bool = False        # gRefCOCO's GRES head on DFAM's object embeddings

  def __post_init__(self):
    if self.sparse_query not in SPARSE_QUERIES:
      raise ValueError(f"unknown sparse_query {self.sparse_query!r}: one of {SPARSE_QUERIES}")
    if self.clip.image_size % self.clip.patch_size or (self.clip.image_size // self.clip.patch_size) % 2:
      raise ValueError("the CLIP grid (image_size / patch_size) must be an even integer (CLIP-SFP halves it)")
    if self.sam.encoder.grid % 4:
      raise ValueError("the SAM grid must be a multiple of 4 (SAM-SFP pools it by 4)")

  @property
  def dim(self) -> int:
    return self.sam.prompt_embed_dim

  @property
  def clip_grid(self) -> int:
    return self.clip.image_size // self.clip.patch_size

  @property
  def oracle(self) -> bool:
    return self.sparse_query == "gt_category"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "BridgeConfig":
    d = dict(d)
    return cls(sam=SamConfig.from_dict(d.pop("sam")), clip=CLIPVisionConfig(**d.pop("clip")),
               bert=BertConfig(**d.pop("bert")), **d)


class BridgeSam(nnx.Module):
  BATCH_INPUTS = ("image", "input_ids", "attention_mask")  # + "category" for the gt_category oracle
  LOSS_INPUTS = ("mask", "no_target", "category")          # batch fields jaxris.losses.bridge reads

  def __init__(self, cfg: BridgeConfig, *, rngs: nnx.Rngs, dtype=None):
    self.cfg = cfg
    if cfg.oracle:
      self.BATCH_INPUTS = BridgeSam.BATCH_INPUTS + ("category",)
    sam, c, grid = cfg.sam, cfg.dim, cfg.sam.encoder.grid
    self.sam_encoder = ImageEncoderViT(sam.encoder, rngs=rngs, dtype=dtype)
    self.prompt_encoder = PromptEncoder(c, (grid, grid), (sam.encoder.img_size,) * 2, sam.mask_in_chans, rngs=rngs)
    self.mask_decoder = MaskDecoder(c, sam.decoder_depth, sam.decoder_mlp_dim, sam.decoder_num_heads,
                                    sam.num_multimask_outputs, sam.iou_head_depth, sam.iou_head_hidden_dim,
                                    rngs=rngs, dtype=dtype)
    self.clip = CLIPVisionModel(cfg.clip, rngs=rngs, dtype=dtype)
    self.bert = BertModel(cfg.bert, rngs=rngs, dtype=dtype)
    self.lang_mlp = text_projection(cfg.bert.hidden_size, c, rngs=rngs, dtype=dtype)
    self.clip_mlpl = text_projection(cfg.clip_text_dim, c, rngs=rngs, dtype=dtype)
    self.adaptor_clip = MMLayer(cfg.clip.hidden_size, c, c, rngs=rngs, dtype=dtype)
    self.backbone_clip = SimpleFeaturePyramid(c, cfg.clip_sfp_dim, (2.0, 1.0, 0.5), 14, rngs=rngs, dtype=dtype)
    self.pixel_decoder = PixelDecoder((cfg.clip_sfp_dim,) * 3, c, c, cfg.pixel_layers, cfg.pixel_heads,
                                      cfg.pixel_points, cfg.pixel_ffn, rngs=rngs)
    self.backbone_sam = SimpleFeaturePyramid(c, c, (1.0, 0.5, 0.25), 16, rngs=rngs, dtype=dtype)
    self.dfam = Dfam(c, cfg.dfam_queries, cfg.dfam_heads, cfg.dfam_ffn, cfg.dfam_layers, 3, cfg.clip_text_dim, c,
                     no_target_head=cfg.no_target_head, rngs=rngs, dtype=dtype)
    self.txt2txt = Txt2txt(c, cfg.txt_heads, cfg.txt_ffn, rngs=rngs, dtype=dtype)
    # Constants (see the module docstring): random until jaxris.weights.bridge fills them.
    key = rngs.params()
    text = jax.random.normal(key, (cfg.num_classes + 1, cfg.clip_text_dim))
    self.class_text = Buffer(text[1:] / jnp.linalg.norm(text[1:], axis=-1, keepdims=True))
    self.sot_vec = Buffer(text[0])
    rows = np.full((cfg.num_category_ids,), cfg.num_classes - 1, np.int32)
    rows[:min(cfg.num_category_ids, cfg.num_classes - 1)] = np.arange(min(cfg.num_category_ids, cfg.num_classes - 1))
    self.category_rows = Buffer(jnp.asarray(rows))

  # -- pieces ----------------------------------------------------------------------------------

  def clip_view(self, images):
    """SAM-normalised images [B, S, S, 3] -> CLIP's input: pixels / 255, torch bicubic (a = -0.75,
    no antialias) to the CLIP size, CLIP mean/std (spec §2)."""
    x = (images.astype(jnp.float32) * jnp.asarray(PIXEL_STD) + jnp.asarray(PIXEL_MEAN)) / 255.0
    size = self.cfg.clip.image_size
    x = resize_2d(x, (size, size), "bicubic", axes=(1, 2))
    return ((x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)).astype(images.dtype)

  def clip_patches(self, images):
    """[B, n², D_clip]: the vision tower's last block (before post_layernorm), class token dropped."""
    return self.clip(self.clip_view(images)).hidden_states[-1][:, 1:]

  def encode_text(self, input_ids, attention_mask, *, rngs=None):
    """-> L [B, T, C] (lang_mlp of BERT's last hidden state)."""
    return self.lang_mlp(self.bert(input_ids, attention_mask, rngs=rngs).last_hidden_state)

  def sparse_prompt(self, lang, category=None):
    """[B, 1, C]: Txt2txt of the query over L."""
    if self.cfg.oracle:
      if category is None:
        raise ValueError("sparse_query='gt_category' (an oracle) needs the ground-truth category of every sample")
      rows = self.category_rows[...][jnp.clip(category, 0, self.cfg.num_category_ids - 1)]
      rows = jnp.where(category < 0, self.cfg.num_classes - 1, rows)
      query = self.clip_mlpl(self.class_text[...][rows].astype(lang.dtype))
    else:
      query = lang[:, 0]
    return self.txt2txt(query[:, None], lang)

  def features(self, images, input_ids, attention_mask, category=None, *, rngs=None, dfam: bool = True):
    """Everything up to the SAM decoder -> dict(E, dense, sparse, lang, dfam outputs if asked)."""
    embed = self.sam_encoder(images)
    lang = self.encode_text(input_ids, attention_mask, rngs=rngs)
    fused = self.adaptor_clip(self.clip_patches(images).astype(lang.dtype), lang, attention_mask)
    p_dense, multi_scale = self.pixel_decoder(list(self.backbone_clip(fused).values()))
    out = {"embed": embed, "p_dense": p_dense, "sparse": self.sparse_prompt(lang, category)}
    if dfam:
      sam_feats = list(self.backbone_sam(embed).values())[::-1]   # coarse -> fine: S6, S5, S4
      out["dfam"] = self.dfam(multi_scale, sam_feats, embed, lang[:, 0], self.sot_vec[...], self.class_text[...])
    return out

  def decode(self, embed, p_dense, sparse, out_size):
    """SAM's decoder on E + bicubic(p_dense -> g²) with [iou, mask x4, p_sparse] -> logits [B, *out_size]."""
    grid = embed.shape[1:3]
    dense = resize_2d(p_dense.astype(jnp.float32), grid, "bicubic", axes=(1, 2)).astype(embed.dtype)
    image_pe = self.prompt_encoder.pe_layer.grid(grid)[None].astype(embed.dtype)
    low_res, _ = self.mask_decoder(embed, image_pe, sparse.astype(embed.dtype), dense, multimask_output=False)
    return resize_2d(low_res[:, 0], out_size, "bilinear")

  # -- entry points ------------------------------------------------------------------------------

  def train_outputs(self, images, input_ids, attention_mask, category=None, *, rngs=None) -> dict:
    """All outputs of the training loss: ``sam_logits`` [B, S, S] and DFAM's predictions."""
    f = self.features(images, input_ids, attention_mask, category, rngs=rngs)
    return {"sam_logits": self.decode(f["embed"], f["p_dense"], f["sparse"], images.shape[1:3]), **f["dfam"]}

  def __call__(self, images, input_ids, attention_mask, category=None, *, rngs=None):
    """images [B, S, S, 3] (SAM-normalised), input_ids / attention_mask [B, T] (category [B] for the
    oracle) -> logits [B, S, S]; with the no-target head {"logits", "no_target" [B, 2]}. DFAM runs
    only for the no-target head."""
    f = self.features(images, input_ids, attention_mask, category, rngs=rngs, dfam=self.cfg.no_target_head)
    logits = self.decode(f["embed"], f["p_dense"], f["sparse"], images.shape[1:3])
    if self.cfg.no_target_head:
      return {"logits": logits, "no_target": f["dfam"]["nt_label"]}
    return logits
