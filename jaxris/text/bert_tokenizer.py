"""BERT WordPiece tokenization to fixed-length numpy arrays.

A thin wrapper over transformers' fast ``BertTokenizerFast`` built from a local
``vocab.txt`` (never the hub), so the ids are exactly transformers'. Every text becomes
``[CLS] tokens [SEP]`` right-padded to ``max_length``; longer texts are truncated (keeping
the final ``[SEP]``) with a warning that names the text (DESIGN.md principle 8).

  tok = BertTokenizer(jaxris.weights.bert.minilm_dir(), max_length=20)
  batch = tok(["the man on the left", ""])   # input_ids, attention_mask, token_type_ids: int32 [2, 20]
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

_VOCAB = "vocab.txt"
_CONFIG = "tokenizer_config.json"


def _read_vocab(path: str) -> dict[str, int]:
  # Same reading as transformers' load_vocab: one token per line, the id is the line number.
  with open(path, encoding="utf-8") as f:
    return {line.rstrip("\n"): i for i, line in enumerate(f)}


class BertTokenizer:
  """texts -> {input_ids, attention_mask, token_type_ids}, numpy int32 [N, max_length]."""

  def __init__(self, vocab_dir_or_file: str | os.PathLike, max_length: int = 20, lower_case: bool = True, *,
               strip_accents: bool | None = None, tokenize_chinese_chars: bool = True):
    """``strip_accents=None`` follows ``lower_case``, as in the original BERT."""
    from transformers import BertTokenizerFast  # heavy import, only when a tokenizer is built

    path = os.fspath(vocab_dir_or_file)
    if os.path.isdir(path):
      path = os.path.join(path, _VOCAB)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: the BERT tokenizer needs the model's vocab.txt")
    if max_length < 2:
      raise ValueError(f"max_length must be at least 2 ([CLS] and [SEP]), got {max_length}")
    vocab = _read_vocab(path)
    missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in vocab]
    if missing:
      raise ValueError(f"{path} lacks the special tokens {missing}: not a BERT WordPiece vocabulary")
    self.max_length = max_length
    self.vocab_file = path
    self._tokenizer = BertTokenizerFast(vocab=vocab, do_lower_case=lower_case, strip_accents=strip_accents,
                                        tokenize_chinese_chars=tokenize_chinese_chars)

  @classmethod
  def from_pretrained_dir(cls, directory: str | os.PathLike, max_length: int = 20) -> "BertTokenizer":
    """Reads ``vocab.txt`` and, when present, the casing options of ``tokenizer_config.json``."""
    options = {}
    config_path = os.path.join(os.fspath(directory), _CONFIG)
    if os.path.isfile(config_path):
      with open(config_path) as f:
        options = json.load(f)
    return cls(directory, max_length, lower_case=options.get("do_lower_case", True),
               strip_accents=options.get("strip_accents"),
               tokenize_chinese_chars=options.get("tokenize_chinese_chars", True))

  @property
  def vocab_size(self) -> int:
    return len(self._tokenizer)

  @property
  def pad_token_id(self) -> int:
    return self._tokenizer.pad_token_id

  pad_id = pad_token_id  # the name XlmrTokenizer uses

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError("BertTokenizer takes a list of str (wrap a single text in a list)")
    texts = list(texts)
    if not texts:
      empty = np.zeros((0, self.max_length), np.int32)
      return {"input_ids": empty, "attention_mask": empty.copy(), "token_type_ids": empty.copy()}
    enc = self._tokenizer(texts, max_length=self.max_length, truncation=True, padding="max_length",
                          return_tensors="np", return_attention_mask=True, return_token_type_ids=True)
    out = {k: np.asarray(enc[k], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    truncated = self._warn_truncated(texts, out["attention_mask"])
    for i in np.flatnonzero(out["attention_mask"].sum(axis=1) == 2):
      if i not in truncated:  # (with max_length=2 every text has just [CLS] [SEP])
        warnings.warn(f"text {i} ({texts[i]!r}) has no tokens: encoded as [CLS] [SEP] only", stacklevel=2)
    return out

  def _warn_truncated(self, texts: list[str], attention_mask: np.ndarray) -> set[int]:
    """Warns for every text longer than max_length; returns their indices."""
    # Only a row that fills every slot can have been cut; re-encode just those, untruncated.
    full = np.flatnonzero(attention_mask[:, -1])
    if not len(full):
      return set()
    lengths = [len(ids) for ids in self._tokenizer([texts[i] for i in full])["input_ids"]]
    truncated = set()
    for i, n in zip(full, lengths):
      if n > self.max_length:
        truncated.add(int(i))
        shown = texts[i] if len(texts[i]) <= 80 else texts[i][:77] + "..."
        warnings.warn(f"text {i} has {n} tokens with [CLS]/[SEP], truncated to max_length={self.max_length}: "
                      f"{shown!r}", stacklevel=3)
    return truncated
