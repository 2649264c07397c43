"""PyTorch reference of the whole SAM+CLIP bridge forward (spec §3), assembled from the official
segment_anything SAM (image encoder, prompt encoder, mask decoder), transformers' CLIPVisionModel and
BertModel, and the clean-room bridge modules of tests/bridge_reference*.py, plus the weight copy into
jaxris's BridgeSam (every parameter exactly once).

Channels first and sequence-first attention, as the official code runs. The SAM decoder is called once
per sample (the official MaskDecoder repeats one image's embedding for every prompt set).
"""

from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn

import bridge_reference as ref
import bridge_reference_dfam as ref_dfam
from jaxris.models.bert import BertConfig
from jaxris.models.clip import CLIPVisionConfig
from jaxris.models.ris.bridge.model import CLIP_MEAN, CLIP_STD, BridgeConfig
from jaxris.models.sam.sam import PIXEL_MEAN, PIXEL_STD, sam_config
from jaxris.weights import bert as bert_weights
from jaxris.weights import clip as clip_weights
from jaxris.weights import sam as sam_weights
from jaxris.weights.random_torch import randomize_

# Reduced sizes: SAM 128 px / 16 px patches (grid 8), prompts 64 wide; CLIP 48 px / 8 px patches (grid 6).
SAM = dataclasses.replace(sam_config("vit_b", img_size=128, patch_size=16, embed_dim=32, depth=2, num_heads=2,
                                     global_attn_indexes=(1,), window_size=4, out_chans=64),
                          prompt_embed_dim=64, decoder_mlp_dim=128)
CLIP = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=48,
            patch_size=8)
BERT = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            max_position_embeddings=64)
SIZES = dict(clip_sfp_dim=48, pixel_layers=2, pixel_heads=4, pixel_points=2, pixel_ffn=64, dfam_queries=8,
             dfam_heads=4, dfam_ffn=64, txt_heads=4, txt_ffn=64, clip_text_dim=24, num_classes=6, num_category_ids=5)


def small_config(**overrides) -> BridgeConfig:
  return BridgeConfig(sam=SAM, clip=CLIPVisionConfig(**CLIP), bert=BertConfig(**BERT, add_pooling_layer=False),
                      no_target_head=True, **{**SIZES, **overrides})


class BridgeRef(nn.Module):
  def __init__(self, cfg: BridgeConfig, seed: int = 0):
    super().__init__()
    torch.manual_seed(seed)
    enc, c = cfg.sam.encoder, cfg.dim
    grid = enc.grid
    self.cfg = cfg
    self.sam = Sam(
        ImageEncoderViT(depth=enc.depth, embed_dim=enc.embed_dim, img_size=enc.img_size, mlp_ratio=4,
                        norm_layer=partial(nn.LayerNorm, eps=1e-6), num_heads=enc.num_heads, patch_size=enc.patch_size,
                        qkv_bias=True, use_rel_pos=True, global_attn_indexes=list(enc.global_attn_indexes),
                        window_size=enc.window_size, out_chans=c),
        PromptEncoder(embed_dim=c, image_embedding_size=(grid, grid), input_image_size=(enc.img_size,) * 2,
                      mask_in_chans=16),
        MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(depth=2, embedding_dim=c,
                                                                          mlp_dim=cfg.sam.decoder_mlp_dim, num_heads=8),
                    transformer_dim=c, iou_head_depth=3, iou_head_hidden_dim=256),
        pixel_mean=list(PIXEL_MEAN), pixel_std=list(PIXEL_STD))
    self.clip = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**dataclasses.asdict(cfg.clip)))
    bert = {k: v for k, v in dataclasses.asdict(cfg.bert).items() if k != "add_pooling_layer"}
    self.bert = transformers.BertModel(transformers.BertConfig(**bert), add_pooling_layer=False)
    self.lang_mlp = nn.Linear(cfg.bert.hidden_size, c)
    self.clip_mlpl = nn.Linear(cfg.clip_text_dim, c)
    self.adaptor_clip = ref.MMLayerRef(cfg.clip.hidden_size, c, c)
    self.backbone_clip = ref.SimpleFeaturePyramidRef(c, cfg.clip_sfp_dim, (2.0, 1.0, 0.5), 14)
    self.pixel_decoder = ref.PixelDecoderRef((cfg.clip_sfp_dim,) * 3, c, c, cfg.pixel_layers, cfg.pixel_heads,
                                             cfg.pixel_points, cfg.pixel_ffn)
    self.backbone_sam = ref.SimpleFeaturePyramidRef(c, c, (1.0, 0.5, 0.25), 16)
    self.dfam = ref_dfam.DfamRef(c, cfg.dfam_queries, cfg.dfam_heads, cfg.dfam_ffn, cfg.dfam_layers,
                                 cfg.clip_text_dim, c, no_target_head=cfg.no_target_head)
    self.txt2txt = ref.Txt2txtRef(c, cfg.txt_heads, cfg.txt_ffn)
    randomize_(self, seed, std=0.1)
    g = torch.Generator().manual_seed(seed + 1)
    text = torch.randn(cfg.num_classes, cfg.clip_text_dim, generator=g)
    self.register_buffer("class_text", text / text.norm(dim=-1, keepdim=True))
    self.register_buffer("sot_vec", torch.randn(cfg.clip_text_dim, generator=g))
    self.register_buffer("category_rows", torch.randperm(cfg.num_category_ids, generator=g).to(torch.int32))

  def forward(self, image, input_ids, attention_mask, category=None):
    """image [B, 3, S, S] SAM-normalised -> (logits [B, S, S], no-target logits [B, 2] or None, sparse [B, 1, C])."""
    cfg = self.cfg
    e = self.sam.image_encoder(image)
    pixels = (image * torch.tensor(PIXEL_STD)[:, None, None] + torch.tensor(PIXEL_MEAN)[:, None, None]) / 255
    pixels = F.interpolate(pixels, size=(cfg.clip.image_size,) * 2, mode="bicubic", align_corners=False)
    pixels = (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]
    patches = self.clip(pixel_values=pixels).last_hidden_state[:, 1:]          # before post_layernorm
    lang = self.lang_mlp(self.bert(input_ids, attention_mask=attention_mask).last_hidden_state)  # [B, T, C]
    fused = self.adaptor_clip(patches, lang.permute(0, 2, 1), attention_mask[:, :, None].float())
    p = self.backbone_clip(fused)
    p_dense, multi_scale = self.pixel_decoder([p["p2"], p["p3"], p["p4"]])
    s = self.backbone_sam(e)
    nt = None
    if cfg.no_target_head:
      out = self.dfam(multi_scale, [s["p6"], s["p5"], s["p4"]], e, lang[:, 0], self.sot_vec, self.class_text)
      nt = out["nt_label"]
    if cfg.sparse_query == "gt_category":
      rows = self.category_rows[category.clamp(0, cfg.num_category_ids - 1)].long()
      rows = torch.where(category < 0, cfg.num_classes - 1, rows)
      query = self.clip_mlpl(self.class_text[rows])
    else:
      query = lang[:, 0]
    sparse = self.txt2txt(query[None], lang.transpose(0, 1)).transpose(0, 1)    # [B, 1, C]
    dense = F.interpolate(p_dense, size=e.shape[-2:], mode="bicubic", align_corners=False)
    pe = self.sam.prompt_encoder.get_dense_pe()
    low = torch.cat([self.sam.mask_decoder(e[b:b + 1], pe, sparse[b:b + 1], dense[b:b + 1], False)[0]
                     for b in range(e.shape[0])])
    logits = F.interpolate(low, size=image.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return logits, nt, sparse


def flax_params(r: BridgeRef) -> dict[str, np.ndarray]:
  """Every BridgeSam parameter and buffer from the reference."""
  cfg = r.cfg
  _, sam = sam_weights.convert_state_dict({k: v.detach() for k, v in r.sam.state_dict().items()}, cfg=cfg.sam)
  out = {k.replace("image_encoder.", "sam_encoder.", 1): np.asarray(v) for k, v in sam.items()}
  out.update({f"clip.{k}": np.asarray(v) for k, v in
              clip_weights.convert_vision_state_dict(r.clip.state_dict(), cfg.clip).items()})
  out.update({f"bert.{k}": np.asarray(v) for k, v in
              bert_weights.convert_state_dict({k: v.detach().numpy() for k, v in r.bert.state_dict().items()},
                                              cfg.bert).items()})
  for name in ("lang_mlp", "clip_mlpl"):
    layer = getattr(r, name)
    out[f"{name}.kernel"] = layer.weight.detach().numpy().T
    out[f"{name}.bias"] = layer.bias.detach().numpy()
  for name, family in (("adaptor_clip", "pwam"), ("backbone_clip", "sfp"), ("backbone_sam", "sfp"),
                       ("pixel_decoder", "pixel_decoder"), ("txt2txt", "txt2txt")):
    out.update({f"{name}.{k}": v for k, v in ref.torch_to_flax(getattr(r, name), family).items()})
  from test_bridge_dfam import flax_params as dfam_params
  out.update({f"dfam.{k}": v for k, v in dfam_params(r.dfam.state_dict()).items()})
  for name in ("class_text", "sot_vec", "category_rows"):
    out[name] = getattr(r, name).numpy()
  return out
