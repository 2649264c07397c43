"""BertTokenizer: identical ids to transformers' tokenizer (loaded from the model's own
tokenizer.json), fixed-length int32 arrays, warnings for truncated and empty texts."""

import warnings

import numpy as np
import pytest
import transformers

from jaxris.text.bert_tokenizer import BertTokenizer
from jaxris.weights.bert import minilm_dir

TRICKY = [
    "the man on the left holding an umbrella",
    "",
    "   ",
    "Café crème brûlée — naïve façade, Ångström; Zoë's résumé",
    "ÀÉÎÕÜ àéîõü ñ ß ø æ œ",
    "hello,world!!!??...(left)[right]{top}<bottom>\"quoted\" 'single'",
    "U.S.A. e-mail 3.14 $5 100% #1 @home a&b a/b a\\b a|b ~x ^y `z`",
    "unaffable unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 150,                       # one word longer than WordPiece's 100-character limit -> [UNK]
    "中文字符 日本語 한국어 mixed with english",
    "emoji 😀👍 and symbols ©®™ ½ ≠",
    "tabs\tand\nnewlines\r\nand\u200bzero\u00a0width",
    "control\x00chars\x07here",
    "[CLS] [SEP] [PAD] [MASK] [UNK] literal special tokens",
    "UPPER lower MiXeD",
    " ".join(["the second person from the left in a red shirt"] * 8),  # far past 20 tokens
]


@pytest.fixture(scope="module")
def reference():
  # transformers' own loading of the model directory (tokenizer.json + tokenizer_config.json),
  # independent of how our wrapper builds its tokenizer from vocab.txt.
  return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()), local_files_only=True)


@pytest.mark.parametrize("max_length", [20, 7, 64])
def test_ids_match_transformers(reference, max_length):
  tok = BertTokenizer.from_pretrained_dir(minilm_dir(), max_length=max_length)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    ours = tok(TRICKY)
  ref = reference(TRICKY, max_length=max_length, truncation=True, padding="max_length")
  for key in ("input_ids", "attention_mask", "token_type_ids"):
    assert ours[key].dtype == np.int32 and ours[key].shape == (len(TRICKY), max_length), key
    np.testing.assert_array_equal(ours[key], np.array(ref[key]), err_msg=key)
  # [CLS] first, [SEP] last real token, [PAD] after it.
  lengths = ours["attention_mask"].sum(1)
  assert np.all(ours["input_ids"][:, 0] == 101)
  assert np.all(ours["input_ids"][np.arange(len(TRICKY)), lengths - 1] == 102)
  assert np.all(ours["input_ids"][ours["attention_mask"] == 0] == 0)


def test_vocab_file_path_and_directory_agree():
  a = BertTokenizer(minilm_dir() / "vocab.txt")(["Zoë's résumé"])
  b = BertTokenizer(minilm_dir())(["Zoë's résumé"])
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])


def test_truncation_warns_with_the_text_and_exact_fit_does_not():
  tok = BertTokenizer(minilm_dir(), max_length=8)
  exact = "a b c d e f"  # 6 word pieces + [CLS] + [SEP] = 8: fits exactly
  long = "one two three four five six seven eight nine"
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = tok([exact, long])
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1, messages
  assert "truncated" in messages[0] and long in messages[0] and "text 1" in messages[0]
  assert out["attention_mask"].sum(1).tolist() == [8, 8]
  assert out["input_ids"][1, -1] == 102  # [SEP] kept after truncation


def test_empty_text_gives_cls_sep_with_a_warning():
  tok = BertTokenizer(minilm_dir(), max_length=5)
  with pytest.warns(UserWarning, match="no tokens"):
    out = tok(["", "a"])
  assert out["input_ids"].tolist() == [[101, 102, 0, 0, 0], [101, 1037, 102, 0, 0]]
  assert out["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]]


def test_max_length_2_keeps_cls_sep_and_warns_only_about_truncation():
  tok = BertTokenizer(minilm_dir(), max_length=2)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = tok(["a dog", ""])
  messages = [str(w.message) for w in caught]
  assert out["input_ids"].tolist() == [[101, 102], [101, 102]]
  assert len(messages) == 2 and "truncated" in messages[0] and "no tokens" in messages[1], messages


def test_casing_option():
  cased = BertTokenizer(minilm_dir(), lower_case=False)(["Umbrella"])["input_ids"]
  uncased = BertTokenizer(minilm_dir())(["Umbrella"])["input_ids"]
  assert uncased[0, 1] == 12977  # "umbrella" in the uncased vocabulary
  assert cased[0, 1] != 12977    # "Umbrella" is not in it


def test_bad_arguments():
  tok = BertTokenizer(minilm_dir())
  with pytest.raises(TypeError, match="list of str"):
    tok("a single string")
  with pytest.raises(TypeError, match="list of str"):
    tok(["ok", None])
  assert tok([])["input_ids"].shape == (0, 20)
  with pytest.raises(FileNotFoundError, match="vocab.txt"):
    BertTokenizer("/nonexistent/dir")
  with pytest.raises(ValueError, match="max_length"):
    BertTokenizer(minilm_dir(), max_length=1)
