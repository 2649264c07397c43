"""A PyTorch reference of EVF-SAM (hustvl/EVF-SAM model/evf_sam.py ``EvfSamModel``, inference.py,
utils/dataset.py), written from the official code on top of torchscale's BEiT3 and
segment_anything's Sam. EVF-SAM is not a package, so this file plays its part in the parity
tests; module names match the official model, so ``state_dict()`` has the released checkpoint's keys.

The official prompt encoder is segment_anything's with a ``text_embeds`` argument appended after
the point and box tokens; ``prompt_encoder`` below does the same with the stock modules.
"""

import io
import json
import warnings
from functools import partial

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from segment_anything.utils.transforms import ResizeLongestSide
from torch import nn
from torchvision import transforms
from torchvision.transforms import InterpolationMode

with warnings.catch_warnings():  # torchscale/timm import-time deprecation noise
  warnings.simplefilter("ignore")
  from torchscale.architecture.config import EncoderConfig
  from torchscale.model.BEiT3 import BEiT3

PIXEL_MEAN = torch.Tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
PIXEL_STD = torch.Tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)


def beit3_args(width=768, layers=2, heads=12, ffn=3072, vocab=64010, img_size=224):
  """unilm's _get_base_config / _get_large_config with the given sizes."""
  return EncoderConfig(img_size=img_size, patch_size=16, vocab_size=vocab, multiway=True, layernorm_embedding=False,
                       normalize_output=True, no_output_layer=True, drop_path_rate=0, encoder_embed_dim=width,
                       encoder_attention_heads=heads, encoder_ffn_embed_dim=ffn, encoder_layers=layers)


def build_sam(embed_dim=768, depth=2, num_heads=12, global_attn_indexes=(1,), img_size=1024):
  """segment_anything's _build_sam at any size (SAM-H: 1280 / 32 / 16 / (7, 15, 23, 31))."""
  grid = img_size // 16
  return Sam(
      image_encoder=ImageEncoderViT(
          depth=depth, embed_dim=embed_dim, img_size=img_size, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
          num_heads=num_heads, patch_size=16, qkv_bias=True, use_rel_pos=True,
          global_attn_indexes=list(global_attn_indexes), window_size=14, out_chans=256),
      prompt_encoder=PromptEncoder(embed_dim=256, image_embedding_size=(grid, grid),
                                   input_image_size=(img_size, img_size), mask_in_chans=16),
      mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer=TwoWayTransformer(
          depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8), transformer_dim=256, iou_head_depth=3,
          iou_head_hidden_dim=256),
      pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375])


class BEiT3Wrapper(nn.Module):
  def __init__(self, args):
    super().__init__()
    self.beit3 = BEiT3(args)


class EvfSamReference(nn.Module):
  """EvfSamModel's modules and its ``forward(inference=True)`` / ``inference`` paths."""

  def __init__(self, sam: Sam, args: EncoderConfig, out_dim=256):
    super().__init__()
    d = args.encoder_embed_dim
    self.visual_model = sam
    self.mm_extractor = BEiT3Wrapper(args)
    self.text_hidden_fcs = nn.ModuleList([nn.Sequential(nn.Linear(d, d), nn.ReLU(), nn.Linear(d, out_dim))])

  def prompt_encoder(self, points=None, boxes=None, text_embeds=None):
    """EVF-SAM's PromptEncoder.forward (masks=None): [points, box corners, text] sparse tokens."""
    pe = self.visual_model.prompt_encoder
    if points is not None:
      bs = points[0].shape[0]
    elif boxes is not None:
      bs = boxes.shape[0]
    else:
      bs = text_embeds.shape[0] if text_embeds is not None else 1
    sparse = torch.empty((bs, 0, pe.embed_dim))
    if points is not None:
      sparse = torch.cat([sparse, pe._embed_points(points[0], points[1], pad=boxes is None)], dim=1)
    if boxes is not None:
      sparse = torch.cat([sparse, pe._embed_boxes(boxes)], dim=1)
    if text_embeds is not None:
      sparse = torch.cat([sparse, text_embeds], dim=1)
    dense = pe.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(bs, -1, *pe.image_embedding_size)
    return sparse, dense

  def _text_feature(self, images_evf, input_ids, text_padding_position):
    out = self.mm_extractor.beit3(visual_tokens=images_evf, textual_tokens=input_ids,
                                  text_padding_position=text_padding_position)
    return self.text_hidden_fcs[0](out["encoder_out"][:, :1, ...])

  def _decode(self, image_embedding, sparse, dense, multimask_output):
    low_res, iou = self.visual_model.mask_decoder(
        image_embeddings=image_embedding, image_pe=self.visual_model.prompt_encoder.get_dense_pe(),
        sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense, multimask_output=multimask_output)
    if multimask_output:
      order = torch.argsort(iou, dim=-1, descending=True)
      low_res = torch.take_along_dim(low_res, order[..., None, None], dim=1)[:, :1]
    return low_res

  def forward(self, images, images_evf, input_ids, attention_masks, offset, resize_list, original_sizes):
    """The official forward with inference=True: a list of [n_i, H_i, W_i] logits per image."""
    image_embeddings = torch.cat([self.visual_model.image_encoder(images[i:i + 1]) for i in range(len(images))])
    counts = [int(offset[i + 1] - offset[i]) for i in range(len(offset) - 1)]
    images_evf = torch.cat([images_evf[i:i + 1].expand(n, -1, -1, -1) for i, n in enumerate(counts)])
    feat = torch.split(self._text_feature(images_evf, input_ids, ~attention_masks), counts)
    pred_masks = []
    for i, f in enumerate(feat):
      sparse, dense = self.prompt_encoder(text_embeds=f)
      low_res = self._decode(image_embeddings[i].unsqueeze(0), sparse, dense, False)
      pred_masks.append(self.visual_model.postprocess_masks(low_res, resize_list[i], original_sizes[i])[:, 0])
    return pred_masks

  def inference(self, images, images_evf, input_ids, resize_list, original_size_list, multimask_output=False,
                points=None, boxes=None):
    """EvfSamModel.inference (one image, one unpadded prompt); points / boxes (padded-input pixels)
    join the text as the official prompt encoder would take them."""
    image_embeddings = self.visual_model.image_encoder(images)
    feat = self._text_feature(images_evf, input_ids, torch.zeros_like(input_ids))
    sparse, dense = self.prompt_encoder(points, boxes, feat)
    low_res = self._decode(image_embeddings, sparse, dense, multimask_output)
    return self.visual_model.postprocess_masks(low_res, resize_list[0], original_size_list[0])[:, 0]


def sam_preprocess(x, img_size=1024):
  """inference.py sam_preprocess(model_type="ori"): uint8 HWC -> ([3, S, S], resize_shape)."""
  x = ResizeLongestSide(img_size).apply_image(x)
  h, w = x.shape[:2]
  x = (torch.from_numpy(x).permute(2, 0, 1).contiguous() - PIXEL_MEAN) / PIXEL_STD
  return F.pad(x, (0, img_size - w, 0, img_size - h)), (h, w)


def beit3_preprocess(x, img_size=224):
  """inference.py beit3_preprocess: ToTensor, bicubic squash (no antialias), mean = std = 0.5."""
  return transforms.Compose([
      transforms.ToTensor(),
      transforms.Resize((img_size, img_size), interpolation=InterpolationMode.BICUBIC, antialias=None),
      transforms.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
  ])(x)


def collate_prompts(tokenizer, prompts):
  """utils/dataset.py collate_fn: each prompt tokenised alone, right-padded with the pad id."""
  ids = [tokenizer(p, return_tensors="pt").input_ids[0] for p in prompts]
  ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=tokenizer.pad_token_id)
  return ids, ids.ne(tokenizer.pad_token_id)


# ---- Test fixtures: a small random model laid out like the release, a tiny tokenizer ----------

CORPUS = ["zebra top left", "the man on the left holding an umbrella", "a red car parked near the tree",
          "woman in a blue shirt", "second elephant from the right", "sky", "blurry person at back"]
VOCAB = 200  # BEiT-3 text table rows (>= the test tokenizer's ids)


def reference_model(seed=0, sam_width=128, sam_heads=2, img_size=1024, beit_layers=2):
  """SAM's ViT-B layout at `sam_width` and depth 2, BEiT-3 base width at `beit_layers`; random weights."""
  from jaxris.weights.random_torch import randomize_

  torch.manual_seed(seed)
  model = EvfSamReference(build_sam(sam_width, 2, sam_heads, (1,), img_size),
                          beit3_args(768, beit_layers, 12, 3072, VOCAB))
  return randomize_(model, seed, std=0.02)


def write_tokenizer(directory):
  """A tiny sentencepiece model + the released tokenizer files, in `directory` (a pathlib.Path)."""
  import sentencepiece as spm

  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=60,
                                 model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                 minloglevel=2)
  (directory / "sentencepiece.bpe.model").write_bytes(model.getvalue())
  special = {"bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>", "unk_token": "<unk>",
             "pad_token": "<pad>", "mask_token": "<mask>"}
  (directory / "special_tokens_map.json").write_text(json.dumps(special))
  (directory / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "XLMRobertaTokenizer", "padding_side": "right", "model_max_length": 1e30, **special}))


def write_config(directory, hidden_size=768, architecture="EvfSamModel", **overrides):
  """config.json as in YxZhang/evf-sam (sizes as given)."""
  config = {"architectures": [architecture], "bos_token_id": 0, "eos_token_id": 2, "hidden_size": hidden_size,
            "mm_extractor_scale": "base" if hidden_size == 768 else "large", "sam_scale": "huge", "model_type": "evf",
            "out_dim": 256, "pad_token_id": 1, "tie_word_embeddings": False, "torch_dtype": "float16",
            "transformers_version": "4.31.0", **overrides}
  (directory / "config.json").write_text(json.dumps(config))
