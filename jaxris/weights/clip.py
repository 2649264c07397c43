"""CLIP checkpoints (Hugging Face ``CLIPModel`` directories and OpenAI's ``.pt``) -> jaxris ``CLIPModel``.

The bridge (shared/specs/bridge.md) runs a frozen OpenAI ViT-L/14@336, whose weights exist in
two layouts; both convert to the same parameters:

- a Hugging Face directory (``openai/clip-vit-large-patch14-336``): ``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``, names as jaxris.models.clip, so ``RULES`` is a
  table of renames and transposes; ``vocab.json`` + ``merges.txt`` are the tokenizer's;
- OpenAI's ``ViT-L-14-336px.pt`` (``clip.load``): a TorchScript archive, read with
  ``torch.jit.load(map_location="cpu").state_dict()`` (TorchScript's own loader: it builds
  tensors and TorchScript modules, runs no Python pickle code; ``torch.load(weights_only=True)``
  refuses TorchScript archives). A plain ``torch.save``d state_dict in the same layout is read with
  the common reader. The layout (``visual.conv1``, ``visual.transformer.resblocks.N.attn.in_proj_weight``,
  ``ln_final``, ``text_projection`` ...) is renamed to Hugging Face's first (``in_proj`` split
  into q/k/v, ``visual.proj``/``text_projection`` transposed: OpenAI multiplies x @ proj), and
  the config is read from the shapes as OpenAI's ``build_model`` does (heads = width / 64,
  QuickGELU, LayerNorm eps 1e-5, pooling at the argmax of the ids). ResNet CLIPs are refused.

Conversion is strict (DESIGN.md principle 7): every tensor is used or named in ``IGNORE`` (index
buffers, and the three scalars OpenAI's TorchScript archives carry), every parameter filled.

  python -m jaxris.convert.clip --src HF_DIR_OR_PT --out DIR   # DIR: config.json + params.safetensors (+ vocabulary)
  model, tokenizer = jaxris.weights.clip.load(DIR)             # or load(HF_DIR) / load(X.pt), converted on the fly
"""

from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from typing import Callable, Mapping

import numpy as np

from jaxris.models.clip import LEGACY_EOS_TOKEN_ID, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPVisionConfig
from jaxris.models.clip import CLIPVisionModel, abstract_model, abstract_vision_model
from jaxris.text import clip_tokenizer
from jaxris.text.clip_tokenizer import CLIPTokenizer
from jaxris.weights import fetch, mapping, reader, store
from jaxris.weights.mapping import ConversionError, Rule, conv_kernel, identity, linear_kernel

FAMILY = "clip"
_TOWER = r"(text_model|vision_model)"
_LAYER = _TOWER + r"\.encoder\.layers\.(\d+)\."
_NORM = r"(text_model\.final_layer_norm|vision_model\.pre_layrnorm|vision_model\.post_layernorm)"

RULES = [
    Rule(r"text_model\.embeddings\.(token|position)_embedding\.weight",
         r"text_model.embeddings.\1_embedding.embedding"),
    Rule(r"vision_model\.embeddings\.position_embedding\.weight",
         "vision_model.embeddings.position_embedding.embedding"),
    Rule(r"vision_model\.embeddings\.class_embedding", "vision_model.embeddings.class_embedding"),
    Rule(r"vision_model\.embeddings\.patch_embedding\.weight", "vision_model.embeddings.patch_embedding.kernel",
         conv_kernel),
    Rule(_LAYER + r"(self_attn\.(?:[qkv]_proj|out_proj)|mlp\.fc[12])\.weight", r"\1.encoder.layers.\2.\3.kernel",
         linear_kernel),
    Rule(_LAYER + r"(self_attn\.(?:[qkv]_proj|out_proj)|mlp\.fc[12])\.bias", r"\1.encoder.layers.\2.\3.bias"),
    Rule(_LAYER + r"(layer_norm[12])\.weight", r"\1.encoder.layers.\2.\3.scale"),
    Rule(_LAYER + r"(layer_norm[12])\.bias", r"\1.encoder.layers.\2.\3.bias"),
    Rule(_NORM + r"\.weight", r"\1.scale"),
    Rule(_NORM + r"\.bias", r"\1.bias"),
    Rule(r"(visual_projection|text_projection)\.weight", r"\1.kernel", linear_kernel),
    Rule(r"logit_scale", "logit_scale", identity),
]
IGNORE = [
    _TOWER + r"\.embeddings\.position_ids",  # index buffers (older transformers saved them), recomputed
    r"input_resolution|context_length|vocab_size",  # scalars of OpenAI's TorchScript archives (build_model drops them)
]

_HF_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json")
_HEAD_DIM = 64  # OpenAI's build_model: heads = width // 64


# --- OpenAI's layout -> Hugging Face names --------------------------------------------------

def _split_rows(part: int) -> Callable[[np.ndarray], np.ndarray]:
  return lambda x: np.split(x, 3, axis=0)[part]


def _transpose(x: np.ndarray) -> np.ndarray:
  return x.T


# OpenAI key (regex, matched in full) -> [(Hugging Face key template, transform)]. A block's
# in_proj holds q, k and v stacked on the output axis (nn.MultiheadAttention's order).
_BLOCK_PARTS = [
    (r"attn\.in_proj_weight", [(r"self_attn.q_proj.weight", _split_rows(0)),
                               (r"self_attn.k_proj.weight", _split_rows(1)),
                               (r"self_attn.v_proj.weight", _split_rows(2))]),
    (r"attn\.in_proj_bias", [(r"self_attn.q_proj.bias", _split_rows(0)), (r"self_attn.k_proj.bias", _split_rows(1)),
                             (r"self_attn.v_proj.bias", _split_rows(2))]),
    (r"attn\.out_proj\.(weight|bias)", [(r"self_attn.out_proj.\2", identity)]),
    (r"ln_1\.(weight|bias)", [(r"layer_norm1.\2", identity)]),
    (r"ln_2\.(weight|bias)", [(r"layer_norm2.\2", identity)]),
    (r"mlp\.c_fc\.(weight|bias)", [(r"mlp.fc1.\2", identity)]),
    (r"mlp\.c_proj\.(weight|bias)", [(r"mlp.fc2.\2", identity)]),
]
OPENAI_RULES: list[tuple[str, list[tuple[str, Callable]]]] = [
    (r"visual\.class_embedding", [("vision_model.embeddings.class_embedding", identity)]),
    (r"visual\.positional_embedding", [("vision_model.embeddings.position_embedding.weight", identity)]),
    (r"visual\.conv1\.weight", [("vision_model.embeddings.patch_embedding.weight", identity)]),
    (r"visual\.ln_pre\.(weight|bias)", [(r"vision_model.pre_layrnorm.\1", identity)]),
    (r"visual\.ln_post\.(weight|bias)", [(r"vision_model.post_layernorm.\1", identity)]),
    (r"visual\.proj", [("visual_projection.weight", _transpose)]),
    (r"token_embedding\.weight", [("text_model.embeddings.token_embedding.weight", identity)]),
    (r"positional_embedding", [("text_model.embeddings.position_embedding.weight", identity)]),
    (r"ln_final\.(weight|bias)", [(r"text_model.final_layer_norm.\1", identity)]),
    (r"text_projection", [("text_projection.weight", _transpose)]),
    (r"logit_scale", [("logit_scale", identity)]),
] + [(rf"visual\.transformer\.resblocks\.(\d+)\.{part}",
      [(rf"vision_model.encoder.layers.\1.{t}", f) for t, f in targets])
     for part, targets in _BLOCK_PARTS] + [
    (rf"transformer\.resblocks\.(\d+)\.{part}", [(rf"text_model.encoder.layers.\1.{t}", f) for t, f in targets])
    for part, targets in _BLOCK_PARTS]


def is_openai_layout(state_dict: Mapping) -> bool:
  return "visual.conv1.weight" in state_dict or "ln_final.weight" in state_dict


def openai_to_hf(state_dict: Mapping) -> reader.StateDict:
  """OpenAI's CLIP state_dict -> the same tensors under Hugging Face CLIPModel names (lazy).

  Keys no rule knows keep their name, so the conversion reports them as unexpected.
  """
  source = reader.lazy(state_dict)
  compiled = [(re.compile(pattern), targets) for pattern, targets in OPENAI_RULES]
  specs, plan = {}, {}
  for key in source:
    targets = next(((m, t) for p, t in compiled if (m := p.fullmatch(key))), None)
    if targets is None:
      specs[key], plan[key] = (source.shape(key), source.dtype(key)), (key, identity)
      continue
    m, targets = targets
    for template, transform in targets:
      name = m.expand(template)
      stand_in = np.broadcast_to(np.zeros((), source.dtype(key)), source.shape(key))
      specs[name] = (tuple(np.shape(transform(stand_in))), source.dtype(key))
      plan[name] = (key, transform)
  return reader.StateDict(specs, lambda name: plan[name][1](source[plan[name][0]]), source.where)


def _need(state_dict: Mapping, key: str) -> tuple[int, ...]:
  if key not in state_dict:
    raise ConversionError(f"not an OpenAI CLIP checkpoint: {key} is missing "
                          f"(first keys: {', '.join(sorted(state_dict)[:5])})")
  return tuple(state_dict.shape(key)) if isinstance(state_dict, reader.StateDict) else tuple(np.shape(state_dict[key]))


def _depth(state_dict: Mapping, prefix: str) -> int:
  pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
  return len({m.group(1) for k in state_dict if (m := pattern.match(k))})


def openai_config(state_dict: Mapping) -> CLIPConfig:
  """The config of an OpenAI CLIP state_dict, from its shapes (OpenAI's ``build_model``)."""
  if any(k.startswith(("visual.layer1.", "visual.attnpool.")) for k in state_dict):
    raise ConversionError("ResNet CLIP checkpoints (RN50, RN101, ...) are not supported: only ViT CLIPs")
  width, channels, patch, _ = _need(state_dict, "visual.conv1.weight")
  positions = _need(state_dict, "visual.positional_embedding")[0]
  grid = round((positions - 1) ** 0.5)
  if grid * grid + 1 != positions:
    raise ConversionError(f"visual.positional_embedding has {positions} rows: not 1 + a square grid")
  text_width = _need(state_dict, "ln_final.weight")[0]
  vocab, _ = _need(state_dict, "token_embedding.weight")
  context = _need(state_dict, "positional_embedding")[0]
  projection = _need(state_dict, "text_projection")[1]
  vision_mlp = _need(state_dict, "visual.transformer.resblocks.0.mlp.c_fc.weight")[0]
  text_mlp = _need(state_dict, "transformer.resblocks.0.mlp.c_fc.weight")[0]
  return CLIPConfig(
      vision=CLIPVisionConfig(hidden_size=width, intermediate_size=vision_mlp,
                              num_hidden_layers=_depth(state_dict, "visual.transformer.resblocks."),
                              num_attention_heads=max(width // _HEAD_DIM, 1), num_channels=channels,
                              image_size=grid * patch, patch_size=patch),
      text=CLIPTextConfig(vocab_size=vocab, hidden_size=text_width, intermediate_size=text_mlp,
                          num_hidden_layers=_depth(state_dict, "transformer.resblocks."),
                          num_attention_heads=max(text_width // _HEAD_DIM, 1), max_position_embeddings=context,
                          eos_token_id=LEGACY_EOS_TOKEN_ID),
      projection_dim=projection)


# --- reading --------------------------------------------------------------------------------

def _is_torchscript(path: str) -> bool:
  if not zipfile.is_zipfile(path):
    return False
  with zipfile.ZipFile(path) as z:
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def read_openai(path: str | os.PathLike) -> reader.StateDict:
  """OpenAI's CLIP ``.pt``: a TorchScript archive (torch.jit.load) or a plain state_dict pickle."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"checkpoint not found: {path}")
  if not _is_torchscript(path):
    return reader.read(path)
  import torch  # only reading .pt files needs PyTorch

  try:
    with warnings.catch_warnings():  # torch 2.10+ deprecates TorchScript; OpenAI's files are TorchScript
      warnings.simplefilter("ignore", FutureWarning)
      module = torch.jit.load(path, map_location="cpu")
  except Exception as e:  # a corrupt archive: name it rather than show a TorchScript traceback
    raise reader.ReadError(f"cannot read {path} with torch.jit.load: {type(e).__name__}: "
                           f"{(str(e).strip().splitlines() or [''])[0]}") from None
  return reader.lazy(module.state_dict(), where=path)


def convert_state_dict(state_dict: Mapping, config: CLIPConfig) -> reader.StateDict:
  """A CLIPModel state_dict in Hugging Face names (numpy, torch or a reader.StateDict) -> our
  dotted parameter names, float32; lazy (see jaxris.weights.mapping.convert)."""
  shapes = store.param_shapes(abstract_model(config))
  return mapping.convert(state_dict, RULES, shapes, ignore=IGNORE, what="CLIP checkpoint")


def convert_vision_state_dict(state_dict: Mapping, config: CLIPVisionConfig) -> reader.StateDict:
  """A vision tower's state_dict (transformers' ``CLIPVisionModel``: keys with or without the
  ``vision_model.`` prefix) -> the parameters of a standalone jaxris ``CLIPVisionModel``; lazy."""
  source = reader.lazy(state_dict)
  prefix = "vision_model."
  named = {k if k.startswith(prefix) else prefix + k: k for k in source}
  renamed = reader.StateDict({k: (source.shape(v), source.dtype(v)) for k, v in named.items()},
                             lambda k: source[named[k]], source.where)
  shapes = {prefix + k: v for k, v in store.param_shapes(abstract_vision_model(config)).items()}
  params = mapping.convert(renamed, RULES, shapes, ignore=IGNORE, what="CLIP vision checkpoint")
  return vision_params(params)


def vision_params(params: reader.StateDict) -> reader.StateDict:
  """The ``vision_model.*`` parameters of a CLIPModel, renamed for a standalone CLIPVisionModel."""
  prefix = "vision_model."
  names = {k[len(prefix):]: k for k in params if k.startswith(prefix)}
  return reader.StateDict({k: (params.shape(v), params.dtype(v)) for k, v in names.items()},
                          lambda k: params[names[k]], params.where)


def convert_openai(state_dict: Mapping) -> tuple[CLIPConfig, reader.StateDict]:
  """An OpenAI CLIP state_dict -> (config from its shapes, params)."""
  config = openai_config(reader.lazy(state_dict))
  return config, convert_state_dict(openai_to_hf(state_dict), config)


def convert_hf_dir(src: str | os.PathLike) -> tuple[CLIPConfig, reader.StateDict]:
  """Reads a Hugging Face CLIPModel directory (lazily); returns (config, params)."""
  src = os.fspath(src)
  if not reader.weight_files(src):
    raise FileNotFoundError(f"{src} has neither {' nor '.join(reader.HF_WEIGHT_FILES)}: "
                            "not a Hugging Face CLIP directory")
  config = CLIPConfig.from_hf_config(src)
  return config, convert_state_dict(reader.read_dir(src), config)


def convert(src: str | os.PathLike) -> tuple[CLIPConfig, reader.StateDict]:
  """A Hugging Face CLIP directory or an OpenAI ``.pt`` -> (config, params)."""
  src = os.fspath(src)
  if os.path.isdir(src):
    return convert_hf_dir(src)
  if not os.path.isfile(src):
    raise FileNotFoundError(f"{src} not found: give a Hugging Face CLIP directory or OpenAI's .pt "
                            "(e.g. ViT-L-14-336px.pt)")
  state_dict = read_openai(src)
  if not is_openai_layout(state_dict):
    raise ConversionError(f"{src} is not in OpenAI's CLIP layout (no visual.conv1.weight / ln_final.weight; "
                          f"first keys: {', '.join(sorted(state_dict)[:5])})")
  return convert_openai(state_dict)


# --- converted directories ------------------------------------------------------------------

def _vocabulary_of(src: str, vocab: str | None) -> list[str]:
  """The tokenizer files to copy: `vocab`, else those beside/inside `src`, else the fetch cache's."""
  if vocab is not None:
    if not os.path.isfile(vocab):
      raise FileNotFoundError(f"{vocab} not found (the CLIP vocabulary: python -m jaxris.weights.fetch clip_vocab)")
    return [vocab]
  directory = src if os.path.isdir(src) else os.path.dirname(os.path.abspath(src))
  if os.path.isfile(os.path.join(directory, clip_tokenizer.VOCAB_GZ)):
    return [os.path.join(directory, clip_tokenizer.VOCAB_GZ)]
  if os.path.isdir(src) and clip_tokenizer.vocab_file(src):
    return [os.path.join(src, f) for f in _HF_TOKENIZER_FILES if os.path.isfile(os.path.join(src, f))]
  cached = fetch.cached("clip_vocab")  # fetched before; never downloads here
  return [cached] if cached else []


def convert_dir(src: str | os.PathLike, out: str | os.PathLike, vocab: str | None = None,
                progress: bool = False) -> tuple[CLIPConfig, list[str]]:
  """Converts a Hugging Face CLIP directory or OpenAI ``.pt`` into a jaxris weights directory,
  with the tokenizer's vocabulary when one is found; returns (config, vocabulary files copied)."""
  src, out = os.fspath(src), os.fspath(out)
  config, params = convert(src)
  files = _vocabulary_of(src, vocab)
  store.save(out, FAMILY, config.to_dict(), params, progress)
  for f in files:
    shutil.copy(f, os.path.join(out, os.path.basename(f)))
  if not files:
    warnings.warn(f"no CLIP vocabulary found for {src}: {out} holds the weights, but load() needs the tokenizer's "
                  f"vocabulary: python -m jaxris.weights.fetch clip_vocab --out {out}")
  return config, [os.path.basename(f) for f in files]


def _is_converted(path: str) -> bool:
  try:
    with open(os.path.join(path, store.CONFIG_FILE)) as f:
      return "family" in json.load(f)
  except (OSError, ValueError):
    return False


def _read(path: str | os.PathLike):
  """(config, params) of a converted jaxris directory (a dict), a Hugging Face directory or an OpenAI
  ``.pt`` (a lazy StateDict, converted as it is read)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: give CLIP weights (python -m jaxris.convert.clip --src "
                            "HF_DIR_OR_PT --out DIR, a Hugging Face CLIP directory, or OpenAI's .pt)")
  if os.path.isdir(path) and _is_converted(path):
    config_dict, params = store.load(path, FAMILY)
    return CLIPConfig.from_dict(config_dict), params
  return convert(path)


def load_model(path: str | os.PathLike, *, dtype=None) -> CLIPModel:
  """The model of a converted jaxris directory, a Hugging Face directory or an OpenAI ``.pt``
  (``dtype``: compute dtype; parameters stay float32)."""
  config, params = _read(path)
  model = abstract_model(config, dtype=dtype)
  store.assign_params(model, dict(params))  # replaces every abstract parameter: no random init needed
  return model


def load_vision_model(path: str | os.PathLike, *, dtype=None) -> CLIPVisionModel:
  """Only the vision tower of a CLIP checkpoint (converted, Hugging Face or OpenAI): the bridge's
  frozen CLIP; the text tower is never built."""
  config, params = _read(path)
  if isinstance(params, reader.StateDict):
    params = dict(vision_params(params))  # only the vision tensors are read
  else:
    params = {k[len("vision_model."):]: v for k, v in params.items() if k.startswith("vision_model.")}
  model = abstract_vision_model(config.vision, dtype=dtype)
  store.assign_params(model, params)
  return model


def load(path: str | os.PathLike, *, context_length: int = clip_tokenizer.CONTEXT_LENGTH,
         dtype=None) -> tuple[CLIPModel, CLIPTokenizer]:
  """Returns (model, tokenizer) from a converted directory or a Hugging Face one (its vocabulary
  inside), or an OpenAI ``.pt`` (its vocabulary beside it, or fetched into the cache before)."""
  path = os.fspath(path)
  model = load_model(path, dtype=dtype)
  directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
  found = clip_tokenizer.vocab_file(directory) or (None if os.path.isdir(path) else fetch.cached("clip_vocab"))
  if found is None:
    raise FileNotFoundError(f"{directory} holds no CLIP vocabulary ({clip_tokenizer.VOCAB_GZ} or vocab.json + "
                            f"merges.txt): python -m jaxris.weights.fetch clip_vocab --out {directory}")
  tokenizer = CLIPTokenizer.from_file(found, context_length=context_length)
  if tokenizer.vocab_size > model.config.text.vocab_size:
    raise ValueError(f"{found} has {tokenizer.vocab_size} tokens but the model only {model.config.text.vocab_size} "
                     "embeddings: the vocabulary belongs to another model")
  if context_length > model.config.text.max_position_embeddings:
    raise ValueError(f"context_length {context_length} > the model's {model.config.text.max_position_embeddings} "
                     "positions")
  return model, tokenizer
