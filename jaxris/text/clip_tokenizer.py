"""CLIP's byte-level BPE tokenizer to fixed-length numpy arrays, from OpenAI's vocabulary file.

The bridge's CLIP text constants (shared/specs/bridge.md 4.6) are CLIP text features of category
names, so the ids must be the ones the official model was trained with. The vocabulary is
OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` (``python -m jaxris.weights.fetch clip_vocab`` puts it
in the cache), or a Hugging Face directory's ``vocab.json`` + ``merges.txt``. The ids equal those
of transformers' ``CLIPTokenizer`` (the tokenizers-library one; transformers has no other since
5.0) built from the same vocabulary, which differs from OpenAI's Python tokenizer only on text
that needs ftfy's repairs or holds HTML entities (OpenAI unescapes ``&amp;``, transformers does
not), never on plain text. One known difference from transformers: characters newer than Python's
Unicode database (3.11: Unicode 14) are classed and lower-cased by Python's tables, not by the
tokenizers library's newer ones. Step by step, as transformers does it:

1. the special tokens ``<|startoftext|>`` / ``<|endoftext|>``, written literally in the text, are
   kept as their ids (49406 / 49407) and the text between them is handled on its own;
2. Unicode NFC, every run of whitespace -> one space, lower case (character by character, so a
   final capital sigma becomes sigma, not final sigma);
3. split with CLIP's pattern: the contractions 's 't 're 've 'm 'll 'd, runs of letters, single
   digits, runs of anything else but whitespace (whitespace is dropped);
4. each piece's UTF-8 bytes -> GPT-2's printable byte alphabet, ``</w>`` glued to the last
   symbol, then BPE: merge the lowest-ranked adjacent pair (all of its occurrences, left to
   right) until no pair is in the merge table;
5. ``<|startoftext|>`` ids ``<|endoftext|>``, cut to ``context_length`` (77) keeping the final
   ``<|endoftext|>`` (OpenAI's ``tokenize(..., truncate=True)``), right-padded with ``pad_id``.

``pad_id`` is 0 by default, as OpenAI's ``clip.tokenize`` (transformers pads with 49407): with the
causal text tower nothing after the end-of-text token changes a real token's features.

  tok = CLIPTokenizer.from_file(jaxris.weights.fetch.fetch_checkpoint("clip_vocab"))
  batch = tok(["a photo of a cat", "it's 3 dogs!"])   # input_ids, attention_mask: int32 [2, 77]
"""

from __future__ import annotations

import gzip
import json
import os
import unicodedata
import warnings

import numpy as np
import regex

VOCAB_GZ = "bpe_simple_vocab_16e6.txt.gz"  # OpenAI's file: a header line, then one merge per line
HF_FILES = ("vocab.json", "merges.txt")
SOT, EOT = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
# OpenAI uses only the first 49152 - 256 - 2 merges of the file: with 2 x 256 byte symbols and the
# two special tokens that makes the 49408-entry vocabulary.
NUM_MERGES = 49152 - 256 - 2

_PATTERN = regex.compile(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|"""
                         r"""[^\s\p{L}\p{N}]+""")
# The byte-level step of the tokenizers library splits each piece again with GPT-2's pattern
# (whitespace parts left out: a piece has none). It only splits the pieces that mix letters and
# other characters: "<|endoftext|>" written in capitals, lower-cased, becomes "<|", "endoftext", "|>".
_BYTE_LEVEL_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}+|[^\s\p{L}\p{N}]+""")
_WHITESPACE = regex.compile(r"\s+")
_SPECIALS = regex.compile(f"({regex.escape(SOT)}|{regex.escape(EOT)})")
_END_OF_WORD = "</w>"


def byte_alphabet() -> tuple[list[str], list[str]]:
  """GPT-2's printable stand-ins of the 256 bytes -> (stand-in of each byte 0..255, vocabulary order).

  Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...)
  get the code points from 256 up, in byte order. The vocabulary lists the printable ones first,
  then the others (OpenAI's tokenizer: the insertion order of its byte table).
  """
  printable = [*range(ord("!"), ord("~") + 1), *range(ord("\xa1"), ord("\xac") + 1),
               *range(ord("\xae"), ord("\xff") + 1)]
  others = [b for b in range(256) if b not in printable]
  chars = {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}
  return [chars[b] for b in range(256)], [chars[b] for b in printable + others]


def read_vocab_gz(path: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` -> (token -> id, merges in rank order).

  The vocabulary is built as OpenAI's tokenizer builds it: the 256 byte symbols, the same with
  ``</w>``, one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.
  """
  with gzip.open(path, "rt", encoding="utf-8") as f:
    lines = f.read().split("\n")
  merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
  if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
    raise ValueError(f"{path} is not a CLIP BPE vocabulary: expected {NUM_MERGES} merges of two symbols "
                     "after a header line")
  alphabet = byte_alphabet()[1]
  tokens = alphabet + [c + _END_OF_WORD for c in alphabet] + ["".join(m) for m in merges] + [SOT, EOT]
  return {t: i for i, t in enumerate(tokens)}, merges


def read_hf_files(directory: str | os.PathLike) -> tuple[dict[str, int], list[tuple[str, str]]]:
  """A Hugging Face CLIP directory's ``vocab.json`` + ``merges.txt`` -> (token -> id, merges)."""
  directory = os.fspath(directory)
  with open(os.path.join(directory, "vocab.json"), encoding="utf-8") as f:
    vocab = json.load(f)
  with open(os.path.join(directory, "merges.txt"), encoding="utf-8") as f:
    lines = [line for line in f.read().split("\n") if line and not line.startswith("#version")]
  merges = [tuple(line.split()) for line in lines]
  if any(len(m) != 2 for m in merges):
    raise ValueError(f"{directory}/merges.txt has lines that are not two symbols: not a BPE merge list")
  return vocab, merges


def vocab_file(directory: str | os.PathLike) -> str | None:
  """The vocabulary a directory holds (OpenAI's .gz, else the Hugging Face pair), or None."""
  directory = os.fspath(directory)
  if os.path.isfile(os.path.join(directory, VOCAB_GZ)):
    return os.path.join(directory, VOCAB_GZ)
  if all(os.path.isfile(os.path.join(directory, f)) for f in HF_FILES):
    return os.path.join(directory, HF_FILES[0])
  return None


class CLIPTokenizer:
  """texts -> {input_ids, attention_mask}, numpy int32 [N, context_length] (see the module docstring)."""

  def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], context_length: int = CONTEXT_LENGTH,
               pad_id: int = 0):
    missing = [t for t in (SOT, EOT) if t not in vocab]
    if missing:
      raise ValueError(f"the vocabulary lacks {missing}: not a CLIP vocabulary")
    if context_length < 2:
      raise ValueError(f"context_length must be at least 2 (start and end of text), got {context_length}")
    self._bytes, alphabet = byte_alphabet()
    absent = [c for c in alphabet + [c + _END_OF_WORD for c in alphabet] if c not in vocab]
    if absent:
      raise ValueError(f"the vocabulary lacks {len(absent)} byte symbols (e.g. {absent[:3]}): not a byte-level BPE")
    self.vocab = vocab
    self.ranks = {pair: i for i, pair in enumerate(merges)}
    self.context_length = context_length
    self.pad_id = pad_id
    self.sot_id, self.eot_id = vocab[SOT], vocab[EOT]
    self._cache: dict[str, list[int]] = {}

  @classmethod
  def from_file(cls, path: str | os.PathLike, context_length: int = CONTEXT_LENGTH, pad_id: int = 0) -> "CLIPTokenizer":
    """OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, or a directory holding it or vocab.json + merges.txt."""
    path = os.fspath(path)
    if os.path.isdir(path):
      found = vocab_file(path)
      if found is None:
        raise FileNotFoundError(f"{path} holds neither {VOCAB_GZ} nor {' + '.join(HF_FILES)}: get OpenAI's "
                                f"vocabulary with python -m jaxris.weights.fetch clip_vocab --out {path}")
      path = found
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path} not found: get OpenAI's CLIP vocabulary with "
                              "python -m jaxris.weights.fetch clip_vocab")
    if path.endswith(".gz"):
      vocab, merges = read_vocab_gz(path)
    else:
      vocab, merges = read_hf_files(os.path.dirname(path))
    return cls(vocab, merges, context_length, pad_id)

  from_pretrained_dir = from_file

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)

  def _bpe(self, piece: str) -> list[int]:
    """One pre-tokenized piece -> its token ids (cached: captions repeat words)."""
    ids = self._cache.get(piece)
    if ids is not None:
      return ids
    symbols = [self._bytes[b] for b in piece.encode("utf-8")]
    symbols[-1] += _END_OF_WORD
    while len(symbols) > 1:
      rank, best = min((self.ranks.get(pair, len(self.ranks)), pair) for pair in zip(symbols, symbols[1:]))
      if rank == len(self.ranks):
        break
      merged, i = [], 0
      while i < len(symbols):
        if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
          merged.append(symbols[i] + symbols[i + 1])
          i += 2
        else:
          merged.append(symbols[i])
          i += 1
      symbols = merged
    ids = [self.vocab[s] for s in symbols]
    if len(self._cache) < 100_000:
      self._cache[piece] = ids
    return ids

  def encode(self, text: str) -> list[int]:
    """The ids of `text`, without the start/end tokens and without truncation."""
    ids = []
    for part in _SPECIALS.split(text):
      if part in (SOT, EOT):
        ids.append(self.vocab[part])
        continue
      part = _WHITESPACE.sub(" ", unicodedata.normalize("NFC", part))
      part = "".join(c.lower() for c in part)  # per character, as the tokenizers library lower-cases
      for piece in _PATTERN.findall(part):
        for word in _BYTE_LEVEL_PATTERN.findall(piece):
          ids.extend(self._bpe(word))
    return ids

  def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
      raise TypeError("CLIPTokenizer takes a list of str (wrap a single text in a list)")
    n = self.context_length
    input_ids = np.full((len(texts), n), self.pad_id, np.int32)
    attention_mask = np.zeros((len(texts), n), np.int32)
    for i, text in enumerate(texts):
      body = self.encode(text)
      if len(body) > n - 2:
        shown = text if len(text) <= 80 else text[:77] + "..."
        warnings.warn(f"text {i} has {len(body) + 2} tokens with start/end of text, truncated to "
                      f"context_length={n} (the end-of-text token kept): {shown!r}", stacklevel=2)
        body = body[:n - 2]
      elif not body:
        warnings.warn(f"text {i} ({text!r}) has no tokens: encoded as start and end of text only", stacklevel=2)
      ids = [self.sot_id, *body, self.eot_id]
      input_ids[i, :len(ids)] = ids
      attention_mask[i, :len(ids)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}
