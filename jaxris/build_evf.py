"""How an EVF-SAM recipe's ``model`` and ``init`` configs build the model (see configs/evf_sam_vith.py).

Pretrained parts, by ``init`` key:
  evf        a converted EVF-SAM checkpoint directory (python convert/evf_sam.py): every
             parameter and the tokenizer; fine-tunes a released model.
  sam        converted SAM weights (python convert/sam.py) for ``visual_model``.
  beit3      converted BEiT-3 weights (python convert/beit3.py) for ``mm_extractor.beit3``.
  tokenizer  BEiT-3's sentencepiece model (beit3.spm), or "minilm": the bert-base-uncased
             WordPiece vocabulary shipped with all-MiniLM-L6-v2 (the CPU-sized RefShapes recipe,
             whose small BEiT-3 learns its text table from scratch).
The projector (``text_hidden_fcs``) always starts from a random init, as in the official training.
"""

from __future__ import annotations

from flax import nnx

from jaxris.models.beit3 import BEiT3Config
from jaxris.build import DTYPES, load_pretrained, sam_for
from jaxris.models.ris.evf import EvfConfig, EvfSam
from jaxris.weights import store


def evf_config(model_cfg, vocab_size: int | None = None) -> EvfConfig:
  sam = sam_for(model_cfg)
  sizes = getattr(BEiT3Config, model_cfg.beit3)  # base | large
  overrides = dict(model_cfg.beit3_overrides)
  if vocab_size and "vocab_size" not in overrides:
    overrides["vocab_size"] = vocab_size
  return EvfConfig(sam=sam, beit3=sizes(**overrides), fusion=model_cfg.fusion, pooling=model_cfg.pooling,
                   multimask=model_cfg.multimask)


def tokenizer_for(init_cfg, max_length: int):
  """The recipe's tokenizer: BEiT-3's sentencepiece, or MiniLM's WordPiece for RefShapes."""
  if init_cfg.tokenizer == "minilm":
    from jaxris.text.bert_tokenizer import BertTokenizer
    from jaxris.weights.bert import minilm_dir
    return BertTokenizer.from_pretrained_dir(minilm_dir(), max_length=max_length)
  from jaxris.text.xlmr_tokenizer import XlmrTokenizer
  return XlmrTokenizer(init_cfg.tokenizer, max_length=max_length, pad_to_max_length=True)


def build_evf(model_cfg, init_cfg, seed: int = 0):
  """-> (EvfSam, EvfConfig, tokenizer) with the pretrained parts `init_cfg` names."""
  from jaxris.weights import evf_sam

  dtype = DTYPES[model_cfg.dtype]
  if init_cfg.get("evf"):
    model, tokenizer = evf_sam.load(init_cfg.evf, dtype)
    # Training batches need one text length: pad every text to max_tokens.
    tokenizer.max_length, tokenizer.pad_to_max_length = model_cfg.max_tokens, True
    return model, model.cfg, tokenizer
  tokenizer = tokenizer_for(init_cfg, model_cfg.max_tokens)
  cfg = evf_config(model_cfg, vocab_size=tokenizer.vocab_size if init_cfg.tokenizer == "minilm" else None)
  model = EvfSam(cfg, rngs=nnx.Rngs(seed), dtype=dtype)
  updates = {}
  if init_cfg.get("sam"):
    from jaxris.weights import sam as sam_weights
    _, sam_params = store.load(init_cfg.sam, sam_weights.FAMILY)
    updates.update({f"visual_model.{k}": v for k, v in sam_params.items()})
  if init_cfg.get("beit3"):
    from jaxris.weights import beit3 as beit3_weights
    _, beit3_params = store.load(init_cfg.beit3, beit3_weights.FAMILY)
    updates.update({f"mm_extractor.beit3.{k}": v for k, v in beit3_params.items()
                    if not k.startswith("vision_embed.mask_token")})
  if updates:
    load_pretrained(model, updates)
  return model, cfg, tokenizer

