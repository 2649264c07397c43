"""A PyTorch reference of DIT-SAM, written from the official forward (wysnzzzz/DIT models/*/net.py,
segment_anything/modeling/image_encoder_{layer_wise,e2e,token_layer_wise,e2e_token,cross_attention,
cross_attention_FFN}.py, layers/sa_layer.py) on top of segment_anything's modules and transformers'
BertModel. The official DIT code is not a package, so this file plays its part
in the parity tests; module names match the official ``Net`` so its state_dict has the official keys.
"""

from functools import partial

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, TwoWayTransformer
from segment_anything.modeling.image_encoder import add_decomposed_rel_pos
from torch import nn
from transformers import BertConfig, BertModel

NUM_SLOTS = 20
ATT_DIM, ATT_HEADS, FFN_DIM = 512, 8, 2048  # the official MHAtt(768, 512, 8, 0.1) and FFN(768, 2048, 768)


def _dit_attention(attn, x, h, w):
  """Official DIT attention: logits scaled after q@k, rel-pos only on the image-image block."""
  b, n, c = x.shape
  qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  logits = (q @ k.transpose(-2, -1)) * attn.scale
  logits = logits.reshape(b * attn.num_heads, n, n)
  hw = h * w
  image_block = add_decomposed_rel_pos(logits[:, -hw:, -hw:], q.reshape(b * attn.num_heads, n, -1)[:, -hw:, :],
                                       attn.rel_pos_h, attn.rel_pos_w, (h, w), (h, w))
  logits = logits.clone()
  logits[:, -hw:, -hw:] = image_block
  weights = logits.reshape(b, attn.num_heads, n, n).softmax(dim=-1)
  return attn.proj((weights @ v).transpose(1, 2).reshape(b, n, c))


def _dit_block(block, x, h, w):
  x = x + _dit_attention(block.attn, block.norm1(x), h, w)  # no window partition in DIT
  return x + block.mlp(block.norm2(x))


class LayerNorm(nn.Module):
  """sa_layer.LayerNorm: unbiased std, eps added to the std."""

  def __init__(self, size, eps=1e-6):
    super().__init__()
    self.eps = eps
    self.weight = nn.Parameter(torch.ones(size))
    self.bias = nn.Parameter(torch.zeros(size))

  def forward(self, x):
    return self.weight * (x - x.mean(-1, keepdim=True)) / (x.std(-1, keepdim=True) + self.eps) + self.bias


class MHAtt(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.linear_v, self.linear_k, self.linear_q = (nn.Linear(dim, ATT_DIM) for _ in range(3))
    self.linear_merge = nn.Linear(ATT_DIM, dim)
    self.dropout = nn.Dropout(0.1)

  def forward(self, v, k, q):
    b = q.size(0)
    split = lambda t: t.view(b, -1, ATT_HEADS, ATT_DIM // ATT_HEADS).transpose(1, 2)
    v, k, q = split(self.linear_v(v)), split(self.linear_k(k)), split(self.linear_q(q))
    scores = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    out = torch.matmul(self.dropout(F.softmax(scores, dim=-1)), v)
    return self.linear_merge(out.transpose(1, 2).contiguous().view(b, -1, ATT_DIM))


class FC(nn.Module):
  def __init__(self, din, dout):
    super().__init__()
    self.linear = nn.Linear(din, dout)
    self.dropout = nn.Dropout(0.1)

  def forward(self, x):
    return self.dropout(F.relu(self.linear(x)))


class MLP(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc = FC(dim, hidden)
    self.linear = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.linear(self.fc(x))


class FFN(nn.Module):
  def __init__(self, dim):
    super().__init__()
    self.mlp = MLP(dim, FFN_DIM)

  def forward(self, x):
    return self.mlp(x)


class MHAFFN(nn.Module):
  """Official MHA_FFN: post-norm MHAtt over (v, k) for the queries q, then a post-norm FFN."""

  def __init__(self, dim):
    super().__init__()
    self.mhatt, self.ffn = MHAtt(dim), FFN(dim)
    self.dropout1, self.dropout2 = nn.Dropout(0.1), nn.Dropout(0.1)
    self.norm1, self.norm2 = LayerNorm(dim), LayerNorm(dim)

  def forward(self, v, k, q):
    q = self.norm1(q + self.dropout1(self.mhatt(v, k, q)))
    return self.norm2(q + self.dropout2(self.ffn(q)))


def _add_scheme_params(enc, scheme, width, depth):
  """The official extra parameters, in the official initialisation."""
  if scheme in ("ldit", "edit"):
    enc.probs = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
  elif scheme == "token_ldit":
    enc.tokens = nn.Parameter(torch.randn(depth, NUM_SLOTS, width))
  elif scheme == "token_edit":
    enc.probs = nn.Linear(width, width)
    enc.tokens = nn.Parameter(nn.init.xavier_uniform_(torch.empty(depth - 1, NUM_SLOTS, width)))
  elif scheme == "crossatt":
    enc.probs = nn.ModuleList([nn.Linear(width, width) for _ in range(depth)])
    for p in enc.probs:
      nn.init.constant_(p.weight, 1)
      nn.init.constant_(p.bias, 0)
    enc.cross = nn.ModuleList([MHAtt(width) for _ in range(depth - 1)])
    enc.ln = nn.ModuleList([LayerNorm(width) for _ in range(depth - 1)])
  elif scheme == "crossatt_ffn":
    enc.cross = nn.ModuleList([MHAFFN(width) for _ in range(depth)])
    enc.ln = nn.ModuleList([LayerNorm(width) for _ in range(depth)])


def _write_slots(enc, i, x, y):
  """The official in-place slot write before block i (x: [B, T + HW, C], y: [B, T, C] text)."""
  t, s = y.shape[1], enc.scheme
  if s == "ldit" or (s == "edit" and i == 0):
    x[:, :t] = enc.dropout(enc.probs[i](y))
  elif s == "edit":
    x[:, :t] = enc.dropout(enc.probs[i](x[:, :t]))
  elif s == "token_ldit":
    x[:, :t] = y + enc.tokens[i]
  elif s == "token_edit":
    x[:, :t] = enc.dropout(enc.probs(y)) if i == 0 else x[:, :t] + enc.tokens[i - 1]
  elif s == "crossatt":
    if i == 0:
      temp = enc.probs[i](y)
    else:
      temp = enc.ln[i - 1](enc.probs[i](y) + enc.dropout(enc.cross[i - 1](x[:, :t], x[:, :t], y)))
    x[:, :t] = temp
  elif s == "crossatt_ffn":
    x[:, :t] = enc.ln[i](y + enc.dropout(enc.cross[i](x[:, t:], x[:, t:], y)))


class DitVisualEncoder(nn.Module):
  def __init__(self, sam_encoder: ImageEncoderViT, scheme: str, text_dim: int):
    super().__init__()
    self.scheme = scheme
    self.patch_embed, self.pos_embed, self.blocks, self.neck = (
        sam_encoder.patch_embed, sam_encoder.pos_embed, sam_encoder.blocks, sam_encoder.neck)
    width = sam_encoder.pos_embed.shape[-1]
    if scheme != "default":
      if text_dim != width:
        self.prob_text = nn.Linear(text_dim, width)
      _add_scheme_params(self, scheme, width, len(self.blocks))
      self.dropout = nn.Dropout(0.1)

  def forward(self, x, y):
    x = self.patch_embed(x)
    b, h, w, c = x.shape
    pos = F.interpolate(self.pos_embed.permute(0, 3, 1, 2), size=(h, w), mode="bicubic", align_corners=False)
    x = (x + pos.permute(0, 2, 3, 1)).reshape(b, h * w, c)
    if self.scheme == "default":
      for blk in self.blocks:
        x = _dit_block(blk, x, h, w)
    else:
      y = self.prob_text(y) if hasattr(self, "prob_text") else y
      x = torch.cat([torch.zeros(b, y.shape[1], c), x], dim=1)
      t = y.shape[1]
      for i, blk in enumerate(self.blocks):
        _write_slots(self, i, x, y)
        x = _dit_block(blk, x, h, w)
      x = x[:, t:]
    return self.neck(x.reshape(b, h, w, c).permute(0, 3, 1, 2))


class LangEncoder(nn.Module):
  def __init__(self, bert: BertModel):
    super().__init__()
    self.bert = bert


class DitNet(nn.Module):
  """The official Net's forward at inference: logits [B, S, S] at the input size."""

  def __init__(self, scheme="ldit", embed_dim=96, depth=3, num_heads=4, global_attn_indexes=(1,), img_size=1024,
               decoder_depth=2, bert_config: BertConfig | None = None, bert_layer=1):
    super().__init__()
    bert_config = bert_config or BertConfig(hidden_size=96, num_hidden_layers=2, num_attention_heads=4,
                                            intermediate_size=200, vocab_size=300)
    encoder = ImageEncoderViT(img_size=img_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=4,
                              norm_layer=partial(nn.LayerNorm, eps=1e-6), qkv_bias=True, use_rel_pos=True,
                              global_attn_indexes=list(global_attn_indexes), window_size=14, out_chans=256)
    self.visual_encoder = DitVisualEncoder(encoder, scheme, bert_config.hidden_size)
    grid = img_size // 16
    self.prompt_encoder = PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                        input_image_size=(img_size, img_size), mask_in_chans=16)
    self.mask_decoder = MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
        depth=decoder_depth, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256,
        iou_head_depth=3, iou_head_hidden_dim=256)
    self.lang_encoder = LangEncoder(BertModel(bert_config))
    self.text_proj = nn.Linear(bert_config.hidden_size, 256)
    self.bert_layer = bert_layer
    # Present in the official state_dict, never used by its forward.
    self.query_embeddings = nn.Parameter(torch.zeros(1, 4, bert_config.hidden_size))
    self.self_attention = nn.MultiheadAttention(bert_config.hidden_size, 4)

  def forward(self, images, input_ids, attention_mask):
    out = self.lang_encoder.bert(input_ids, attention_mask=attention_mask, output_hidden_states=True)
    text = out.hidden_states[self.bert_layer]
    x = self.visual_encoder(images, text)
    b, c, h, w = x.shape
    sparse = self.text_proj(text)
    pe = self.prompt_encoder
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(b, -1, *pe.image_embedding_size)
    dense = F.interpolate(dense, size=(h, w), mode="bicubic", align_corners=False)
    image_pe = pe.pe_layer((h, w)).unsqueeze(0)
    # DIT's decoder takes one prompt set per image (no repeat_interleave): run the official
    # decoder image by image.
    low = torch.cat([self.mask_decoder(x[i:i + 1], image_pe, sparse[i:i + 1], dense[i:i + 1], False)[0]
                     for i in range(b)])
    return nn.UpsamplingBilinear2d(scale_factor=4)(low)[:, 0]
