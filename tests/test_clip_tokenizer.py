"""CLIPTokenizer: the ids of transformers' CLIPTokenizer built from the same OpenAI vocabulary
(bpe_simple_vocab_16e6.txt.gz, fetched once into the jaxris cache; if it cannot be fetched these
tests fail, never skip), on tricky strings and on a sweep over code points; truncation to 77
keeping the end-of-text token; the Hugging Face vocab.json + merges.txt form."""

import gzip
import json
import unicodedata
import warnings

import numpy as np
import pytest
import transformers

from jaxris.text.clip_tokenizer import CLIPTokenizer
from jaxris.weights import fetch

SOT, EOT = 49406, 49407
TRICKY = [
    "a photo of a cat",
    "the man on the left holding an umbrella",
    "",
    "   ",
    "It's  THE dog's ball; they're here, we've gone, I'm in, you'll see, he'd go, don't",
    "IT'S 'S ''s it'sun rock'n'roll",
    "Café crème brûlée — naïve façade, Ångström; Zoë's résumé",
    "e\u0301 A\u030a (decomposed accents: NFC composes them)",
    "ÀÉÎÕÜ àéîõü ñ ß ø æ œ İstanbul ΟΔΟΣ Σ",
    "hello,world!!!??...(left)[right]{top}<bottom>\"quoted\" 'single'",
    "U.S.A. e-mail 3.14 $5 100% #1 @home a&b a/b a\\b a|b ~x ^y `z` &amp;",
    "12345 2nd 1,000,000 0.5x",
    "中文字符 日本語 한국어 mixed with english",
    "emoji 😀👍🏽 👨‍👩‍👧 and symbols ©®™ ½ ≠",
    "tabs\tand\nnewlines\r\nand\u200bzero\u00a0width\u3000ideographic",
    "control\x00chars\x07here\x1c\x1f\x85",
    "<|startoftext|>x<|endoftext|>y <|ENDOFTEXT|> <|endoftext",
    "unaffable unbelievably antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
    "x" * 150,
    " ".join(["the second person from the left in a red shirt"] * 12),  # far past 77 tokens
]


@pytest.fixture(scope="module")
def vocab_gz():
  return fetch.fetch_checkpoint("clip_vocab")  # cached after the first run; an error fails the tests


def _byte_table():
  """GPT-2's byte -> printable character table, in its insertion order (written here, independently)."""
  keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
  table = {b: chr(b) for b in keep}
  n = 0
  for b in range(256):
    if b not in table:
      table[b] = chr(256 + n)
      n += 1
  return table


@pytest.fixture(scope="module")
def reference(vocab_gz, tmp_path_factory):
  """transformers' CLIPTokenizer from vocab.json + merges.txt derived from the .gz as open_clip does."""
  lines = gzip.open(vocab_gz).read().decode("utf-8").split("\n")
  merges = lines[1:49152 - 256 - 2 + 1]
  symbols = list(_byte_table().values())
  vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
  vocab += ["<|startoftext|>", "<|endoftext|>"]
  directory = tmp_path_factory.mktemp("hf_clip_tokenizer")
  (directory / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
  (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
  return transformers.CLIPTokenizer.from_pretrained(str(directory)), directory


def _reference_ids(tokenizer, texts, length=77):
  return np.array(tokenizer(texts, max_length=length, truncation=True, padding="max_length")["input_ids"])


def _quiet(tok, texts):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    return tok(texts)


def test_known_ids(vocab_gz):
  out = CLIPTokenizer.from_file(vocab_gz)(["a photo of a cat"])
  assert out["input_ids"][0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]
  assert out["input_ids"].shape == (1, 77) and out["input_ids"].dtype == np.int32
  assert out["attention_mask"].sum() == 7 and not out["input_ids"][0, 7:].any()  # padded with 0, as OpenAI


@pytest.mark.parametrize("context_length", [77, 16])
def test_ids_match_transformers_on_tricky_strings(vocab_gz, reference, context_length):
  hf, _ = reference
  tok = CLIPTokenizer.from_file(vocab_gz, context_length=context_length, pad_id=hf.pad_token_id)
  ours = _quiet(tok, TRICKY)
  np.testing.assert_array_equal(ours["input_ids"], _reference_ids(hf, TRICKY, context_length))
  lengths = ours["attention_mask"].sum(1)
  assert np.all(ours["input_ids"][:, 0] == SOT)
  assert np.all(ours["input_ids"][np.arange(len(TRICKY)), lengths - 1] == EOT)  # also when truncated


def test_ids_match_transformers_on_a_code_point_sweep(vocab_gz, reference):
  """Every code point below U+3000 and 2000 random ones above, each in letters, digits, repeats, a
  capital and a contraction. Characters Python's Unicode database (3.11: Unicode 14) does not know
  are left out: the tokenizers library's newer tables class some of them as letters, Python not."""
  hf, _ = reference
  rng = np.random.default_rng(0)
  points = [*range(0x3000), *rng.integers(0x3000, 0x110000, 2000).tolist()]
  chars = [chr(c) for c in points if unicodedata.category(chr(c)) not in ("Cs", "Cn")]
  texts = [f"a{c}b {c}{c}1{c} {c.upper()}x{c}'s" for c in chars]
  ours = _quiet(CLIPTokenizer.from_file(vocab_gz, pad_id=hf.pad_token_id), texts)["input_ids"]
  ref = _reference_ids(hf, texts)
  bad = [texts[i] for i in np.flatnonzero((ours != ref).any(1))]
  assert not bad, f"{len(bad)} of {len(texts)} differ, e.g. {bad[:5]!r}"


def test_truncation_keeps_the_end_of_text_token_and_warns(vocab_gz):
  tok = CLIPTokenizer.from_file(vocab_gz)
  exact = " ".join(["cat"] * 75)  # 75 tokens + start + end = 77: fits
  long = " ".join(["cat"] * 76)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    out = tok([exact, long])
  messages = [str(w.message) for w in caught]
  assert len(messages) == 1 and "text 1" in messages[0] and "truncated" in messages[0], messages
  np.testing.assert_array_equal(out["input_ids"][0], out["input_ids"][1])
  assert out["input_ids"][1, -1] == EOT and out["attention_mask"].sum(1).tolist() == [77, 77]


def test_empty_text_gives_start_and_end_with_a_warning(vocab_gz):
  with pytest.warns(UserWarning, match="no tokens"):
    out = CLIPTokenizer.from_file(vocab_gz)(["", "a"])
  assert out["input_ids"][0, :3].tolist() == [SOT, EOT, 0] and out["attention_mask"][0].sum() == 2
  assert CLIPTokenizer.from_file(vocab_gz)([])["input_ids"].shape == (0, 77)


def test_hugging_face_files_give_the_same_ids(vocab_gz, reference, tmp_path):
  _, directory = reference
  from_gz = _quiet(CLIPTokenizer.from_file(vocab_gz), TRICKY)
  from_dir = _quiet(CLIPTokenizer.from_pretrained_dir(directory), TRICKY)
  for key in from_gz:
    np.testing.assert_array_equal(from_dir[key], from_gz[key])
  assert CLIPTokenizer.from_file(vocab_gz).vocab_size == 49408


def test_bad_vocabularies_and_inputs(vocab_gz, tmp_path):
  with pytest.raises(FileNotFoundError, match="fetch clip_vocab"):
    CLIPTokenizer.from_file(tmp_path / "nowhere.txt.gz")
  with pytest.raises(FileNotFoundError, match="neither"):
    CLIPTokenizer.from_file(tmp_path)
  truncated = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
  with gzip.open(truncated, "wt") as f:
    f.write("#version: 0.2\ni n\nt h\n")
  with pytest.raises(ValueError, match="not a CLIP BPE vocabulary"):
    CLIPTokenizer.from_file(truncated)
  with pytest.raises(ValueError, match="lacks"):
    CLIPTokenizer({"a": 0}, [])
  with pytest.raises(TypeError, match="list of str"):
    CLIPTokenizer.from_file(vocab_gz)("a cat")


# --- jaxris.weights.fetch clip_vocab without the network ------------------------------------------

def test_fetch_checks_the_wheel(tmp_path):
  import zipfile

  source = fetch.SOURCES["clip_vocab"]
  wheel, dest = str(tmp_path / "open_clip_torch-3.3.0-py3-none-any.whl"), str(tmp_path / "vocab.gz")
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr("open_clip/other.txt", b"x")
  with pytest.raises(fetch.FetchError, match="has no open_clip/bpe_simple_vocab_16e6.txt.gz"):
    fetch._extract_from_wheel("clip_vocab", source, wheel, dest)
  with zipfile.ZipFile(wheel, "w") as z:
    z.writestr(source.member, b"not the vocabulary")
  with pytest.raises(fetch.FetchError, match="expected 924691ac"):
    fetch._extract_from_wheel("clip_vocab", source, wheel, dest)
  assert not (tmp_path / "vocab.gz").exists()


def test_fetch_reports_a_failed_download_and_copies_into_out(vocab_gz, tmp_path, monkeypatch, capsys):
  class Failed:
    returncode, stdout = 1, "ERROR: Could not find a version that satisfies the requirement open-clip-torch==3.3.0\n"

  # A cache that already holds the checked file: no download, the path is printed, --out gets a copy.
  assert fetch.main(["clip_vocab", "--cache", str(vocab_gz.rsplit("/", 1)[0]), "--out", str(tmp_path / "w")]) == 0
  assert (tmp_path / "w" / "bpe_simple_vocab_16e6.txt.gz").read_bytes() == open(vocab_gz, "rb").read()
  monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: Failed())
  assert fetch.main(["clip_vocab", "--cache", str(tmp_path / "cache")]) == 2
  err = capsys.readouterr().err
  assert "pip download of open-clip-torch==3.3.0 failed" in err and "Could not find a version" in err
  assert "openai/CLIP" in err  # the alternative is spelled out
  assert not (tmp_path / "cache" / "bpe_simple_vocab_16e6.txt.gz").exists()
