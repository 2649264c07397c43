"""XLM-R sentencepiece tokenizer of BEiT-3, on a tiny sentencepiece model trained here.

No beit3.spm can be downloaded in tests, so a small unigram model is trained at test time
(same file format, same code path). The oracle is sentencepiece itself with fairseq's id
layout, which is what the official (slow) XLMRobertaTokenizer computes: <s>=0, <pad>=1,
</s>=2, <unk>=3, piece p -> p + 1.
"""

import io
import os
import warnings

import numpy as np
import pytest
import sentencepiece as spm

from jaxris.text.xlmr_tokenizer import XlmrTokenizer

CORPUS = [
    "the man on the left holding an umbrella", "a red car parked near the tree", "zebra standing in tall grass",
    "woman in a blue shirt", "second elephant from the right", "the bigger of the two dogs", "blurry person at back",
    "[semantic] sky", "left pizza slice", "guy in black jacket with a white helmet",
]


@pytest.fixture(scope="module")
def spm_file(tmp_path_factory):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS * 20), model_writer=model, vocab_size=80,
                                 model_type="unigram", character_coverage=1.0, hard_vocab_limit=False,
                                 minloglevel=2)
  path = tmp_path_factory.mktemp("spm") / "beit3.spm"
  path.write_bytes(model.getvalue())
  return str(path)


def fairseq_ids(spm_file, text):
  sp = spm.SentencePieceProcessor(model_file=spm_file)
  return [0] + [p + 1 if p != sp.unk_id() else 3 for p in sp.encode(text)] + [2]


def test_ids_are_xlmr_fairseq_ids(spm_file):
  tok = XlmrTokenizer(spm_file)
  assert (tok.bos_id, tok.pad_id, tok.eos_id) == (0, 1, 2)
  texts = ["the man on the left", "Zebra  standing\tin GRASS!", "qqq unseen ü chars", "[semantic] sky", "a"]
  out = tok(texts)
  for i, text in enumerate(texts):
    ids = out["input_ids"][i][out["attention_mask"][i] == 1].tolist()
    assert ids == fairseq_ids(spm_file, text), text
  assert tok.vocab_size == spm.SentencePieceProcessor(model_file=spm_file).get_piece_size() + 2  # + <pad>, <mask>


def test_right_padding_and_mask_from_the_pad_id(spm_file):
  out = XlmrTokenizer(spm_file)(["a red car parked near the tree", "zebra"])
  ids, mask = out["input_ids"], out["attention_mask"]
  assert ids.dtype == mask.dtype == np.int32
  n = len(fairseq_ids(spm_file, "zebra"))
  assert ids.shape == (2, len(fairseq_ids(spm_file, "a red car parked near the tree")))  # longest in the batch
  assert mask[0].all() and mask[1, :n].all() and not mask[1, n:].any()
  assert (ids[1, n:] == 1).all() and ids[1, n - 1] == 2
  np.testing.assert_array_equal(mask, (ids != 1).astype(np.int32))


def test_fixed_length_padding(spm_file):
  out = XlmrTokenizer(spm_file, max_length=40, pad_to_max_length=True)(["zebra", "sky"])
  assert out["input_ids"].shape == out["attention_mask"].shape == (2, 40)


def test_long_text_is_truncated_with_a_warning_keeping_eos(spm_file):
  tok = XlmrTokenizer(spm_file, max_length=8)
  long = "the man on the left holding an umbrella near a red car"
  with pytest.warns(UserWarning, match="truncated"):
    out = tok(["sky", long])
  full = fairseq_ids(spm_file, long)
  assert out["input_ids"].shape == (2, 8)
  assert out["input_ids"][1].tolist() == full[:7] + [2]
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # nothing to warn about
    tok(["sky"])


def test_empty_text_is_bos_eos_with_a_warning(spm_file):
  with pytest.warns(UserWarning, match="empty"):
    out = XlmrTokenizer(spm_file)(["", "sky"])
  assert out["input_ids"][0, :2].tolist() == [0, 2] and out["attention_mask"][0].tolist()[:3] == [1, 1, 0]


def test_directory_and_bad_arguments(spm_file, tmp_path):
  hf_dir = tmp_path / "tokenizer"
  hf_dir.mkdir()
  os.symlink(spm_file, hf_dir / "sentencepiece.bpe.model")  # as in a Hugging Face tokenizer directory
  np.testing.assert_array_equal(XlmrTokenizer(str(hf_dir))(["sky"])["input_ids"],
                                XlmrTokenizer(spm_file)(["sky"])["input_ids"])
  with pytest.raises(FileNotFoundError, match="beit3.spm"):
    XlmrTokenizer(str(tmp_path / "missing.spm"))
  with pytest.raises(FileNotFoundError, match="holds none"):
    XlmrTokenizer(str(tmp_path))
  tok = XlmrTokenizer(spm_file)
  with pytest.raises(TypeError, match="list of strings"):
    tok("a single string")
  with pytest.raises(ValueError, match="empty list"):
    tok([])
  with pytest.raises(ValueError, match="max_length"):
    XlmrTokenizer(spm_file, max_length=1)
