"""The XLM-R sentencepiece tokenizer of BEiT-3 (``beit3.spm``), batched and padded for JAX.

The official code tokenizes with transformers' ``XLMRobertaTokenizer`` on ``beit3.spm``
(unilm beit3 README) or on the copy EVF-SAM ships in its Hugging Face checkpoints
(``AutoTokenizer.from_pretrained(version, padding_side="right", use_fast=False)``). Each text
becomes ``<s> pieces </s>`` with fairseq's id layout (``<s>`` 0, ``<pad>`` 1, ``</s>`` 2,
``<unk>`` 3, sentencepiece id p -> p + 1); EVF-SAM's ``collate_fn`` right-pads the batch to
its longest text with the pad id and takes ``attention_mask = input_ids != pad_id``.
This class does the same and returns int32 numpy arrays:

  tok = XlmrTokenizer("beit3.spm", max_length=64)
  batch = tok(["the man on the left", "zebra"])
  batch["input_ids"], batch["attention_mask"]      # int32 [2, L]; 1 = real token, 0 = padding

``attention_mask`` is what ``jaxris.models.beit3.BEiT3`` takes as ``text_mask``
(torchscale's ``text_padding_position`` is its inverse, EVF-SAM passes ``~attention_masks``).

Inputs the official code does not handle well: a text longer than ``max_length`` tokens keeps
``<s>``, its first ``max_length - 2`` pieces and ``</s>``, with a warning, as unilm's BEiT-3
datasets (``_get_text_segment``) truncate (EVF-SAM's collate_fn would cut ``</s>`` off, and
fails there on an undefined name). An empty text becomes ``<s></s>`` as in EVF-SAM, with a
warning (unilm raises). With ``pad_to_max_length=True`` every batch has length ``max_length``,
as unilm pads (static shapes for jit); the padding is masked, so it does not change the
model's output at real tokens.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import warnings

import numpy as np

# The file name transformers' XLMRobertaTokenizer.from_pretrained looks for in a directory.
_HF_SPM_NAME = "sentencepiece.bpe.model"
_SPM_NAMES = (_HF_SPM_NAME, "beit3.spm")
_HOW_TO_GET = ("get beit3.spm from https://github.com/addf400/files/releases/download/beit3/beit3.spm "
               "(microsoft/unilm beit3 README), or use the tokenizer directory of an EVF-SAM checkpoint")


def _find_spm(path: str) -> str:
  if os.path.isdir(path):
    for name in _SPM_NAMES:
      if os.path.isfile(os.path.join(path, name)):
        return os.path.join(path, name)
    raise FileNotFoundError(f"{path} holds none of {', '.join(_SPM_NAMES)}: {_HOW_TO_GET}")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"sentencepiece model {path} not found: {_HOW_TO_GET}")
  return path


def _load_xlmr(spm_file: str):
  """transformers' XLMRobertaTokenizer on `spm_file`, whatever the file is called.

  from_pretrained on a directory holding ``sentencepiece.bpe.model`` is the one loading path
  that works on both transformers 4 (slow sentencepiece tokenizer) and 5 (converted to a
  `tokenizers` Unigram with the same ids), so a differently named file is linked into a
  temporary directory under that name.
  """
  from transformers import XLMRobertaTokenizer

  with tempfile.TemporaryDirectory() as tmp:
    target = os.path.join(tmp, _HF_SPM_NAME)
    try:
      os.symlink(os.path.abspath(spm_file), target)
    except OSError:  # no symlinks (some filesystems): copy the ~1 MB file
      shutil.copyfile(spm_file, target)
    return XLMRobertaTokenizer.from_pretrained(tmp)


class XlmrTokenizer:
  """``texts -> dict(input_ids, attention_mask)``, int32 [N, L], right-padded."""

  def __init__(self, spm_path: str | os.PathLike, max_length: int = 512, pad_to_max_length: bool = False):
    """spm_path: ``beit3.spm`` (or any XLM-R sentencepiece model), or a directory holding one.

    max_length: most tokens per text, ``<s>`` and ``</s>`` included (EVF-SAM's
    model_max_length is 512; BEiT-3's text position table allows 1022).
    """
    if max_length < 2:
      raise ValueError(f"max_length must leave room for <s> and </s>, got {max_length}")
    self.spm_file = _find_spm(os.fspath(spm_path))
    self.max_length = max_length
    self.pad_to_max_length = pad_to_max_length
    self._tok = _load_xlmr(self.spm_file)
    self.pad_id = int(self._tok.pad_token_id)
    self.bos_id = int(self._tok.bos_token_id)
    self.eos_id = int(self._tok.eos_token_id)

  @property
  def vocab_size(self) -> int:
    """Number of ids the tokenizer can emit (beit3.spm: 64002; BEiT-3's table has 64010 rows)."""
    return len(self._tok)

  def add_tokens(self, tokens: list[str]) -> dict[str, int]:
    """Appends whole-word tokens after the sentencepiece vocabulary (a checkpoint's
    added_tokens.json, e.g. EVF-SAM multitask's ``[semantic]``); returns the id of each."""
    self._tok.add_tokens(list(tokens))
    return {t: int(self._tok.convert_tokens_to_ids(t)) for t in tokens}

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError("XlmrTokenizer takes a list of strings (wrap a single text in a list)")
    texts = list(texts)
    if not texts:
      raise ValueError("XlmrTokenizer got an empty list of texts")
    ids = [list(x) for x in self._tok(texts, add_special_tokens=True)["input_ids"]]
    for i, text in enumerate(texts):
      if not text.strip():
        warnings.warn(f"text {i} is empty: it is encoded as <s></s> only", stacklevel=2)
      if len(ids[i]) > self.max_length:
        warnings.warn(f"text {i} has {len(ids[i])} tokens, more than max_length={self.max_length}: "
                      f"truncated to <s> + its first {self.max_length - 2} pieces + </s> ({text[:40]!r}...)",
                      stacklevel=2)
        ids[i] = ids[i][:self.max_length - 1] + [self.eos_id]
    length = self.max_length if self.pad_to_max_length else max(len(x) for x in ids)
    input_ids = np.full((len(ids), length), self.pad_id, np.int32)
    for i, x in enumerate(ids):
      input_ids[i, :len(x)] = x
    return {"input_ids": input_ids, "attention_mask": (input_ids != self.pad_id).astype(np.int32)}
