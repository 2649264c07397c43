"""Clean-room PyTorch reference of the SAM+CLIP bridge's modules (shared/specs/bridge.md).

The official code (hitachi-rd-cv/dfam) has no licence and no released weights, so parity means:
this reference, written from the spec's semantics with plain torch layers (channels first,
sequence-first attention, as the official code runs), and the Flax modules agree on the same
random weights. Module and parameter names follow the official state dict, so the copy into
Flax (``load_into`` at the bottom) is a table of renames and transposes, the same a converter
of official checkpoints would use.

Sections are independent: PWAM, the simple feature pyramids, the deformable pixel decoder,
Txt2txt, and the weight copy. Later sections (DFAM, losses) may be appended by other modules'
tests; nothing here depends on them.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ------------------------------------------------------------------------------------------
# PWAM (spec §4.1): x [B, N, 1024], l [B, 256, T] channels first, l_mask [B, T, 1].


class SpatialImageLanguageAttentionRef(nn.Module):
  def __init__(self, v_in, l_in, key_dim, value_dim, num_heads=1):
    super().__init__()
    self.key_dim, self.value_dim, self.num_heads = key_dim, value_dim, num_heads
    self.f_query = nn.Sequential(nn.Conv1d(v_in, key_dim, 1), nn.InstanceNorm1d(key_dim))
    self.f_key = nn.Sequential(nn.Conv1d(l_in, key_dim, 1))
    self.f_value = nn.Sequential(nn.Conv1d(l_in, value_dim, 1))
    self.W = nn.Sequential(nn.Conv1d(value_dim, value_dim, 1), nn.InstanceNorm1d(value_dim))

  def forward(self, x, l, l_mask):
    b, n, _ = x.shape
    m = l_mask.permute(0, 2, 1)                                    # [B, 1, T]
    q = self.f_query(x.permute(0, 2, 1)).permute(0, 2, 1)          # [B, N, key]
    k = self.f_key(l) * m                                          # [B, key, T]
    v = self.f_value(l) * m
    h = self.num_heads
    q = q.reshape(b, n, h, -1).permute(0, 2, 1, 3)                 # [B, h, N, d]
    k = k.reshape(b, h, self.key_dim // h, -1)                     # [B, h, d, T]
    v = v.reshape(b, h, self.value_dim // h, -1)
    s = torch.matmul(q, k) * self.key_dim ** -0.5 + (1e4 * m[:, None] - 1e4)
    s = s.softmax(dim=-1)
    out = torch.matmul(s, v.permute(0, 1, 3, 2))                   # [B, h, N, d]
    out = out.permute(0, 2, 1, 3).reshape(b, n, self.value_dim).permute(0, 2, 1)
    return self.W(out).permute(0, 2, 1)


class PWAMRef(nn.Module):
  """``myPWAM``; with ``MMLayerRef`` around it the output is reshaped to [B, dim, H, W]."""

  def __init__(self, v_in=1024, l_in=256, dim=256, num_heads=1):
    super().__init__()
    self.vis_project = nn.Sequential(nn.Conv1d(v_in, dim, 1), nn.GELU())
    self.image_lang_att = SpatialImageLanguageAttentionRef(v_in, l_in, dim, dim, num_heads)
    self.project_mm = nn.Sequential(nn.Conv1d(dim, dim, 1), nn.GELU())

  def forward(self, x, l, l_mask):
    vis = self.vis_project(x.permute(0, 2, 1))
    lang = self.image_lang_att(x, l, l_mask).permute(0, 2, 1)
    return self.project_mm(vis * lang).permute(0, 2, 1)


class MMLayerRef(nn.Module):
  def __init__(self, v_in=1024, l_in=256, dim=256):
    super().__init__()
    self.fusion = PWAMRef(v_in, l_in, dim)

  def forward(self, x, l, l_mask):
    side = int(math.isqrt(x.shape[1]))
    y = self.fusion(x, l, l_mask)
    return y.permute(0, 2, 1).reshape(y.shape[0], -1, side, side)


# ------------------------------------------------------------------------------------------
# Simple feature pyramids (spec §4.2), NCHW.


class ChannelLayerNorm(nn.Module):
  """detectron2's LayerNorm over the channels of NCHW (eps 1e-6)."""

  def __init__(self, dim, eps=1e-6):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.bias = nn.Parameter(torch.zeros(dim))
    self.eps = eps

  def forward(self, x):
    u = x.mean(1, keepdim=True)
    s = (x - u).pow(2).mean(1, keepdim=True)
    x = (x - u) / torch.sqrt(s + self.eps)
    return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNormRef(nn.Conv2d):
  """detectron2's Conv2d with ``norm`` (and ``activation``) applied after the convolution."""

  def __init__(self, *args, norm=None, activation=None, **kwargs):
    super().__init__(*args, **kwargs)
    self.norm = norm
    self.activation = activation

  def forward(self, x):
    x = super().forward(x)
    if self.norm is not None:
      x = self.norm(x)
    return self.activation(x) if self.activation is not None else x


class SimpleFeaturePyramidRef(nn.Module):
  """x [B, C, H, W] -> {"p<stage>": ...}; stages ``simfp_<log2 stride>`` as nn.Sequential."""

  def __init__(self, in_dim, out_dim, scales, in_stride):
    super().__init__()
    self.names = []
    for scale in scales:
      dim = in_dim
      if scale == 2.0:
        layers = [nn.ConvTranspose2d(in_dim, in_dim // 2, kernel_size=2, stride=2)]
        dim = in_dim // 2
      elif scale == 1.0:
        layers = []
      else:
        k = int(round(1 / scale))
        layers = [nn.MaxPool2d(kernel_size=k, stride=k)]
      layers += [ConvNormRef(dim, out_dim, 1, bias=False, norm=ChannelLayerNorm(out_dim)),
                 ConvNormRef(out_dim, out_dim, 3, padding=1, bias=False, norm=ChannelLayerNorm(out_dim))]
      name = f"simfp_{int(math.log2(int(in_stride / scale)))}"
      self.add_module(name, nn.Sequential(*layers))
      self.names.append(name)

  def forward(self, x):
    return {n.replace("simfp_", "p"): getattr(self, n)(x) for n in self.names}


# ------------------------------------------------------------------------------------------
# Pixel decoder (spec §4.3): Mask2Former's MSDeformAttnPixelDecoder with three FPN levels.


def sine_position_ref(h, w, num_feats=128, temperature=10000, scale=2 * math.pi):
  """[1, 2 * num_feats, h, w]: PositionEmbeddingSine(normalize=True) of an all-valid map."""
  ones = torch.ones(1, h, w)
  y = ones.cumsum(1, dtype=torch.float32)
  x = ones.cumsum(2, dtype=torch.float32)
  y = y / (y[:, -1:, :] + 1e-6) * scale
  x = x / (x[:, :, -1:] + 1e-6) * scale
  dim_t = torch.arange(num_feats, dtype=torch.float32)
  dim_t = temperature ** (2 * (dim_t // 2) / num_feats)
  px, py = x[..., None] / dim_t, y[..., None] / dim_t
  px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
  py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
  return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)


def ms_deform_attn_core(value, shapes, locations, weights):
  """The grid_sample formulation of multi-scale deformable attention.

  value [B, S, M, D], shapes [(H, W)], locations [B, Lq, M, L, P, 2] in [0, 1],
  weights [B, Lq, M, L, P] -> [B, Lq, M * D].
  """
  b, _, m, d = value.shape
  _, lq, _, nl, p, _ = locations.shape
  values = value.split([h * w for h, w in shapes], dim=1)
  grids = 2 * locations - 1
  sampled = []
  for level, (h, w) in enumerate(shapes):
    v = values[level].flatten(2).transpose(1, 2).reshape(b * m, d, h, w)
    g = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)           # [B*M, Lq, P, 2]
    sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False))
  w_ = weights.transpose(1, 2).reshape(b * m, 1, lq, nl * p)
  out = (torch.stack(sampled, dim=-2).flatten(-2) * w_).sum(-1).view(b, m * d, lq)
  return out.transpose(1, 2).contiguous()


class MSDeformAttnRef(nn.Module):
  def __init__(self, dim=256, num_levels=3, num_heads=8, num_points=4):
    super().__init__()
    self.dim, self.num_levels, self.num_heads, self.num_points = dim, num_levels, num_heads, num_points
    self.sampling_offsets = nn.Linear(dim, num_heads * num_levels * num_points * 2)
    self.attention_weights = nn.Linear(dim, num_heads * num_levels * num_points)
    self.value_proj = nn.Linear(dim, dim)
    self.output_proj = nn.Linear(dim, dim)
    self.reset_parameters()

  def reset_parameters(self):
    nn.init.constant_(self.sampling_offsets.weight, 0.0)
    thetas = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], -1)
    grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(self.num_heads, 1, 1, 2)
    grid = grid.repeat(1, self.num_levels, self.num_points, 1)
    for i in range(self.num_points):
      grid[:, :, i, :] *= i + 1
    with torch.no_grad():
      self.sampling_offsets.bias.copy_(grid.view(-1))
    for lin in (self.attention_weights,):
      nn.init.constant_(lin.weight, 0.0)
      nn.init.constant_(lin.bias, 0.0)
    for lin in (self.value_proj, self.output_proj):
      nn.init.xavier_uniform_(lin.weight)
      nn.init.constant_(lin.bias, 0.0)

  def forward(self, query, reference, value_in, shapes):
    """query [B, Lq, C], reference [B, Lq, L, 2] (x, y), value_in [B, S, C]."""
    b, lq, _ = query.shape
    m, nl, p = self.num_heads, self.num_levels, self.num_points
    value = self.value_proj(value_in).view(b, value_in.shape[1], m, self.dim // m)
    offsets = self.sampling_offsets(query).view(b, lq, m, nl, p, 2)
    weights = self.attention_weights(query).view(b, lq, m, nl * p).softmax(-1).view(b, lq, m, nl, p)
    normalizer = torch.tensor([[w, h] for h, w in shapes], dtype=query.dtype)
    locations = reference[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    return self.output_proj(ms_deform_attn_core(value, shapes, locations, weights))


class EncoderLayerRef(nn.Module):
  def __init__(self, dim=256, ffn_dim=1024, num_levels=3, num_heads=8, num_points=4):
    super().__init__()
    self.self_attn = MSDeformAttnRef(dim, num_levels, num_heads, num_points)
    self.norm1 = nn.LayerNorm(dim)
    self.linear1 = nn.Linear(dim, ffn_dim)
    self.linear2 = nn.Linear(ffn_dim, dim)
    self.norm2 = nn.LayerNorm(dim)

  def forward(self, x, pos, reference, shapes):
    x = self.norm1(x + self.self_attn(x + pos, reference, x, shapes))
    return self.norm2(x + self.linear2(F.relu(self.linear1(x))))


class EncoderRef(nn.Module):
  def __init__(self, num_layers, **kw):
    super().__init__()
    self.layers = nn.ModuleList([EncoderLayerRef(**kw) for _ in range(num_layers)])

  @staticmethod
  def reference_points(shapes, batch):
    refs = []
    for h, w in shapes:
      ry, rx = torch.meshgrid(torch.linspace(0.5, h - 0.5, h, dtype=torch.float32),
                              torch.linspace(0.5, w - 0.5, w, dtype=torch.float32), indexing="ij")
      refs.append(torch.stack((rx.reshape(-1) / w, ry.reshape(-1) / h), -1))
    ref = torch.cat(refs, 0)[None].expand(batch, -1, -1)
    return ref[:, :, None].expand(-1, -1, len(shapes), -1)            # valid ratios 1

  def forward(self, x, pos, shapes):
    reference = self.reference_points(shapes, x.shape[0])
    for layer in self.layers:
      x = layer(x, pos, reference, shapes)
    return x


class EncoderOnlyRef(nn.Module):
  def __init__(self, dim=256, num_layers=6, ffn_dim=1024, num_levels=3, num_heads=8, num_points=4):
    super().__init__()
    self.encoder = EncoderRef(num_layers, dim=dim, ffn_dim=ffn_dim, num_levels=num_levels, num_heads=num_heads,
                              num_points=num_points)
    self.level_embed = nn.Parameter(torch.empty(num_levels, dim))
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)
    for mod in self.modules():
      if isinstance(mod, MSDeformAttnRef):
        mod.reset_parameters()
    nn.init.normal_(self.level_embed)

  def forward(self, srcs, pos):
    shapes = [tuple(s.shape[-2:]) for s in srcs]
    x = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    p = torch.cat([q.flatten(2).transpose(1, 2) + self.level_embed[i][None, None] for i, q in enumerate(pos)], 1)
    y = self.encoder(x, p, shapes)
    return y, shapes


def c2_xavier_fill(module):
  nn.init.kaiming_uniform_(module.weight, a=1)
  if module.bias is not None:
    nn.init.constant_(module.bias, 0)


class PixelDecoderRef(nn.Module):
  """features {"p2": [B, 768, 48, 48], "p3": 24², "p4": 12²} -> (p_dense, multi-scale [12², 24², 48²])."""

  def __init__(self, in_channels=(768, 768, 768), conv_dim=256, mask_dim=256, num_layers=6, num_heads=8,
               num_points=4, ffn_dim=1024, num_fpn_levels=3):
    super().__init__()
    self.num_fpn_levels = num_fpn_levels
    self.input_proj = nn.ModuleList([nn.Sequential(nn.Conv2d(c, conv_dim, 1), nn.GroupNorm(32, conv_dim))
                                     for c in in_channels[::-1]])
    for proj in self.input_proj:
      nn.init.xavier_uniform_(proj[0].weight, gain=1)
      nn.init.constant_(proj[0].bias, 0)
    self.transformer = EncoderOnlyRef(conv_dim, num_layers, ffn_dim, len(in_channels), num_heads, num_points)
    self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
    c2_xavier_fill(self.mask_features)
    for i, c in enumerate(in_channels[:num_fpn_levels]):
      lateral = ConvNormRef(c, conv_dim, 1, bias=False, norm=nn.GroupNorm(32, conv_dim))
      output = ConvNormRef(conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(32, conv_dim),
                           activation=F.relu)
      c2_xavier_fill(lateral)
      c2_xavier_fill(output)
      self.add_module(f"adapter_{i + 1}", lateral)
      self.add_module(f"layer_{i + 1}", output)

  def forward(self, features):
    """features: list fine -> coarse, NCHW."""
    srcs = [proj(f) for proj, f in zip(self.input_proj, features[::-1])]
    pos = [sine_position_ref(f.shape[-2], f.shape[-1], srcs[0].shape[1] // 2) for f in features[::-1]]
    y, shapes = self.transformer(srcs, pos)
    b = y.shape[0]
    out = [z.transpose(1, 2).reshape(b, -1, h, w) for z, (h, w) in zip(y.split([h * w for h, w in shapes], 1), shapes)]
    for i in reversed(range(self.num_fpn_levels)):
      cur = getattr(self, f"adapter_{i + 1}")(features[i])
      y = cur + F.interpolate(out[-1], size=cur.shape[-2:], mode="bilinear", align_corners=False)
      out.append(getattr(self, f"layer_{i + 1}")(y))
    return self.mask_features(out[-1]), out[:3]


# ------------------------------------------------------------------------------------------
# Txt2txt (spec §4.5): sequence-first, as nn.MultiheadAttention runs in the official code.


class CrossAttentionLayerRef(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.multihead_attn = nn.MultiheadAttention(dim, num_heads, dropout=0.0)
    self.norm = nn.LayerNorm(dim)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)

  def forward(self, x, memory, mask=None, pos=None, query_pos=None):
    q = x if query_pos is None else x + query_pos
    k = memory if pos is None else memory + pos
    return self.norm(x + self.multihead_attn(q, k, memory, attn_mask=mask)[0])


class FFNLayerRef(nn.Module):
  def __init__(self, dim, ffn_dim):
    super().__init__()
    self.linear1 = nn.Linear(dim, ffn_dim)
    self.linear2 = nn.Linear(ffn_dim, dim)
    self.norm = nn.LayerNorm(dim)
    for p in self.parameters():
      if p.dim() > 1:
        nn.init.xavier_uniform_(p)

  def forward(self, x):
    return self.norm(x + self.linear2(F.relu(self.linear1(x))))


class Txt2txtRef(nn.Module):
  """query [Nq, B, dim], tokens [T, B, dim] -> [Nq, B, dim]; no key padding mask."""

  def __init__(self, dim=256, num_heads=8, ffn_dim=1024):
    super().__init__()
    self.ca = CrossAttentionLayerRef(dim, num_heads)
    self.fcs = FFNLayerRef(dim, ffn_dim)

  def forward(self, query, tokens):
    return self.fcs(self.ca(query, tokens))


# ------------------------------------------------------------------------------------------
# Copying reference weights into the Flax modules (the tests' converter).

# Official name -> Flax name, applied in order (regex, replacement); what is left is unchanged.
RENAMES = {
    "pwam": [(r"(vis_project|project_mm)\.0\.", r"\1."),
             (r"image_lang_att\.(f_query|f_key|f_value|W)\.0\.", r"image_lang_att.\1.")],
    "sfp": [],  # stage indices depend on the stage's layers: see _sfp_rename
    "pixel_decoder": [(r"^input_proj\.(\d+)\.0\.", r"input_proj.\1.conv."),
                      (r"^input_proj\.(\d+)\.1\.", r"input_proj.\1.norm."),
                      (r"^(adapter|layer)_(\d+)\.(weight|bias)$", r"\1_\2.conv.\3")],
    "txt2txt": [(r"\.in_proj_(weight|bias)$", r".in_proj.\1")],
}


def _sfp_rename(name: str, module: nn.Module) -> str:
  """simfp_k.i.* -> simfp_k.{up | conv_1x1 | norm_1x1 | conv_3x3 | norm_3x3}.*: index 0 is the
  ConvTranspose of a x2 stage; the conv indices shift by one after a ConvTranspose or a pool."""
  m = re.match(r"^(simfp_\d+)\.(\d+)\.(.*)$", name)
  stage, index, rest = m[1], int(m[2]), m[3]
  layers = list(getattr(module, stage))
  if isinstance(layers[index], nn.ConvTranspose2d):
    return f"{stage}.up.{rest}"
  which = "1x1" if [i for i, l in enumerate(layers) if isinstance(l, ConvNormRef)].index(index) == 0 else "3x3"
  return f"{stage}.norm_{which}.{rest[len('norm.'):]}" if rest.startswith("norm.") else f"{stage}.conv_{which}.{rest}"


def _flax_name(name: str, family: str, module: nn.Module) -> str:
  for pattern, repl in RENAMES[family]:
    name = re.sub(pattern, repl, name)
  if family == "sfp":
    name = _sfp_rename(name, module)
  if re.search(r"norm(\d*|_1x1|_3x3)\.weight$", name):
    return name[:-len("weight")] + "scale"
  return name[:-len("weight")] + "kernel" if name.endswith(".weight") else name


def _flax_value(t: torch.Tensor, flax_name: str) -> np.ndarray:
  a = t.detach().cpu().numpy().astype(np.float32)
  if flax_name.endswith(".kernel"):
    if flax_name.endswith("up.kernel"):          # ConvTranspose2d [in, out, 2, 2] -> [in, 2, 2, out]
      return a.transpose(0, 2, 3, 1)
    if a.ndim == 4:                                # Conv2d [out, in, kh, kw] -> [kh, kw, in, out]
      return a.transpose(2, 3, 1, 0)
    if a.ndim == 3:                                # Conv1d 1x1 [out, in, 1] -> Linear [in, out]
      return a[:, :, 0].T
    return a.T                                     # Linear / in_proj [out, in] -> [in, out]
  return a


def torch_to_flax(torch_module: nn.Module, family: str) -> dict[str, np.ndarray]:
  """{Flax dotted name: array} of every tensor of `torch_module` (a reference module of `family`:
  "pwam", "sfp", "pixel_decoder" or "txt2txt")."""
  out = {}
  for name, t in torch_module.state_dict().items():
    flax_name = _flax_name(name, family, torch_module)
    if flax_name in out:
      raise ValueError(f"two tensors map to {flax_name}")
    out[flax_name] = _flax_value(t, flax_name)
  return out


def load_into(flax_module, torch_module: nn.Module, family: str):
  """Writes the reference's weights into `flax_module` (every Flax parameter filled exactly once)."""
  from jaxris.models.functional import assign_params
  assign_params(flax_module, torch_to_flax(torch_module, family))
  return flax_module
