"""The data pipeline: transforms (official preprocessing, flip) and the tf.data loader
(sampling, multi-host evaluation)."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
# The torch oracles are imported before anything imports TensorFlow: in this environment
# importing triton (pulled in by torchvision) after TensorFlow crashes the interpreter.
import torch
import torch.nn.functional as F
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

import refcoco_fixture as fx
from jaxris import metrics
from jaxris.data import image_io, loader, refcoco, transforms

L = 64


def char_tokenizer(texts):
  """Bytes of the text as ids, so tests can read the (flipped) sentence back."""
  ids = np.zeros((len(texts), L), np.int32)
  att = np.zeros((len(texts), L), np.int32)
  for i, text in enumerate(texts):
    data = text.encode()[:L]
    ids[i, :len(data)] = list(data)
    att[i, :len(data)] = 1
  return {"input_ids": ids, "attention_mask": att, "token_type_ids": np.zeros_like(ids)}


def decode(ids, att):
  return bytes(int(v) for v in ids[att == 1]).decode()


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  return fx.write_root(str(tmp_path_factory.mktemp("refer")), datasets=("refcoco", "grefcoco"))


def synthetic(n, sentences_per_example, size=(12, 20)):
  rng = np.random.default_rng(1)
  out = []
  for i in range(n):
    mask = np.zeros(size, np.uint8)
    mask[2:6, 3 + i % 5:9 + i % 5] = 1
    out.append({"image": rng.integers(0, 256, size + (3,), dtype=np.uint8), "mask": mask,
                "sentences": [f"ex{i} s{j}" for j in range(sentences_per_example[i])]})
  return out


# ------------------------------------------------------------------------------------------
# Preprocessing against torchvision, following the official code step by step.


def _torch_oracle_dit(image, mask, size=512):
  """DIT's eval transform: RandomResize([size]) on PIL (long side, Python round),
  ToTensor, Normalize(ImageNet), then NormalizeAndPad's centred zero padding."""
  img = Image.fromarray(image)
  msk = Image.fromarray(mask * 255)
  ratio = float(size / float(max(img.height, img.width)))
  new_w, new_h = round(img.width * ratio), round(img.height * ratio)
  img, msk = TF.resize(img, (new_h, new_w)), TF.resize(msk, (new_h, new_w))
  x = TF.normalize(TF.to_tensor(img), mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
  m = TF.to_tensor(msk)
  dh, dw = size - new_h, size - new_w
  top, left = round(dh / 2.0 - 0.1), round(dw / 2.0 - 0.1)
  out = torch.zeros((3, size, size))
  out[:, top:top + new_h, left:left + new_w] = x
  out_m = torch.zeros((1, size, size))
  out_m[:, top:top + new_h, left:left + new_w] = m
  return out.permute(1, 2, 0).numpy(), out_m[0].numpy(), (top, left), (new_h, new_w)


def _torch_oracle_evf(image):
  """EVF-SAM: ResizeLongestSide(1024) + SAM normalisation + bottom/right pad; and the
  BEiT-3 view ToTensor -> Resize((224, 224), bicubic, antialias=None) -> Normalize(0.5)."""
  h, w = image.shape[:2]
  scale = 1024 * 1.0 / max(h, w)
  new_h, new_w = int(h * scale + 0.5), int(w * scale + 0.5)
  x = torch.from_numpy(np.array(TF.resize(TF.to_pil_image(image), (new_h, new_w),
                                          antialias=None))).permute(2, 0, 1).float()
  x = (x - torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)) / torch.tensor(
      [58.395, 57.12, 57.375]).view(-1, 1, 1)
  x = F.pad(x, (0, 1024 - new_w, 0, 1024 - new_h))
  beit = T.Compose([T.ToTensor(), T.Resize((224, 224), interpolation=3, antialias=None),
                    T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])(image)
  return x.permute(1, 2, 0).numpy(), beit.permute(1, 2, 0).numpy(), (new_h, new_w)


def test_dit_eval_preprocessing_matches_the_official_transforms(root):
  for ex in refcoco.read_split(root, "refcoco", "train")[:1] + refcoco.read_split(
      root, "refcoco", "val"):  # A 30x40 RGB and a 36x24 grayscale JPEG.
    image = image_io.read_image(ex["image_path"])
    mask = np.asarray(ex["mask"])
    out = transforms.preprocess(image, mask, ex["sentences"][0], "dit")
    want_image, want_mask, offset, resized = _torch_oracle_dit(image, mask)
    np.testing.assert_array_equal(out["image"], want_image)  # Bit-exact: same PIL ops.
    np.testing.assert_array_equal(out["mask"], want_mask)
    assert tuple(out["pad_offset"]) == offset and tuple(out["resized_size"]) == resized
    assert tuple(out["orig_size"]) == mask.shape
  gray = image_io.read_image(ex["image_path"])
  assert gray.shape == (36, 24, 3) and np.array_equal(gray[..., 0], gray[..., 2])


def test_evf_preprocessing_matches_the_official_transforms():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (300, 451, 3), dtype=np.uint8)  # Odd sizes: rounding matters.
  out = transforms.preprocess(image, None, " The LEFT one ", "evf")
  want_image, want_beit, resized = _torch_oracle_evf(image)
  assert tuple(out["resized_size"]) == resized and tuple(out["pad_offset"]) == (0, 0)
  np.testing.assert_array_equal(out["image"], want_image)
  np.testing.assert_allclose(out["image_evf"], want_beit, atol=5e-6)  # float32 sum order.
  assert out["text"] == "the left one"  # EVF-SAM's eval .strip().lower().
  assert not out["mask"].any()


def test_flip_swaps_image_mask_and_text_together():
  image = np.zeros((16, 32, 3), np.uint8)
  image[:, :16] = (255, 0, 0)  # Red left half.
  image[:, 16:] = (0, 0, 255)
  mask = np.zeros((16, 32), np.uint8)
  mask[4:12, 2:10] = 1  # The target is on the left.
  sentence = "the Left man on the left, not the bright one on the right"
  examples = [{"image": image, "mask": mask, "sentences": [sentence]}]

  def first(flip_prob, flip_swap="substring"):
    cfg = transforms.preprocess_config("dit", size=32, train_sizes=(32,), jitter_prob=0.0,
                                       flip_prob=flip_prob, flip_swap=flip_swap)
    ds = loader.make_dataset(examples * 2, cfg, char_tokenizer, 2, train=True, seed=3,
                             process_index=0, process_count=1)
    batch = next(ds.as_numpy_iterator())
    return batch, decode(batch["input_ids"][0], batch["attention_mask"][0])

  kept, kept_text = first(0.0)
  assert kept_text == sentence
  # 16x32 keeps its size at S=32 and sits 8 rows down: the mask is rows 12:20, cols 2:10.
  assert kept["mask"][0, 12:20, 2:10].min() == 1 and kept["mask"][0].sum() == 64
  flipped, text = first(1.0)
  # Official DIT: plain substring replacement ("bright" -> "bleft"; "Left" untouched).
  assert text == "the Left man on the right, not the bleft one on the left"
  np.testing.assert_allclose(flipped["image"][0], kept["image"][0][:, ::-1], atol=1e-6)
  np.testing.assert_array_equal(flipped["mask"][0], kept["mask"][0][:, ::-1])
  mean_red = (255 / 255 - 0.485) / 0.229
  assert abs(flipped["image"][0, 16, 30, 0] - mean_red) < 1e-5  # Red is now on the right.
  assert flipped["mask"][0, 12:20, 22:30].min() == 1 and flipped["mask"][0].sum() == 64
  _, word_text = first(1.0, "word")
  assert word_text == "the Right man on the right, not the bright one on the left"


def test_train_augmentation_scales_jitter_and_determinism():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
  cfg = transforms.preprocess_config("dit", size=64, train_sizes=(64, 48, 32), flip_prob=0.0,
                                     jitter_prob=1.0)
  seen = set()
  for seed in range(12):
    out = transforms.preprocess(image, None, "x", cfg, train=True,
                                rng=np.random.default_rng(seed))
    seen.add(int(out["resized_size"].max()))
    again = transforms.preprocess(image, None, "x", cfg, train=True,
                                  rng=np.random.default_rng(seed))
    np.testing.assert_array_equal(out["image"], again["image"])
  assert seen == {64, 48, 32}
  plain = transforms.preprocess(image, None, "x", transforms.preprocess_config(
      "dit", size=64, train_sizes=(64,), flip_prob=0.0, jitter_prob=0.0), train=True,
      rng=np.random.default_rng(0))
  jittered = transforms.preprocess(image, None, "x", transforms.preprocess_config(
      "dit", size=64, train_sizes=(64,), flip_prob=0.0, jitter_prob=1.0), train=True,
      rng=np.random.default_rng(0))
  assert np.abs(plain["image"] - jittered["image"]).mean() > 0.01
  blurred = transforms.preprocess(image, None, "x", transforms.preprocess_config(
      "dit", size=64, train_sizes=(64,), flip_prob=0.0, jitter_prob=0.0, blur_prob=1.0),
      train=True, rng=np.random.default_rng(0))
  assert blurred["image"].std() < plain["image"].std()  # Blur smooths the noise.


# ------------------------------------------------------------------------------------------
# Sampling and multi-host evaluation.


@pytest.mark.parametrize("n,count,batch", [(13, 2, 2), (1, 2, 4), (8, 2, 2), (29, 3, 3)])
def test_eval_positions_cover_each_item_once(n, count, batch):
  shards = [loader.eval_positions(n, batch, i, count) for i in range(count)]
  assert len({len(s) for s in shards}) == 1 and len(shards[0]) % batch == 0
  valid = np.concatenate([s[s >= 0] for s in shards])
  assert sorted(valid.tolist()) == list(range(n))


def test_eval_padding_with_two_processes_counts_every_example_once():
  sentences = [1, 3, 2, 1, 1, 4, 1]  # 13 expressions.
  examples = synthetic(len(sentences), sentences)
  cfg = transforms.preprocess_config("dit", size=24, train_sizes=(24,))
  seen, batches = [], []
  for process in (0, 1):
    ds = loader.make_dataset(examples, cfg, char_tokenizer, batch_size=4, train=False,
                             process_index=process, process_count=2)
    process_batches = list(ds.as_numpy_iterator())
    batches.append(len(process_batches))
    for b in process_batches:
      assert b["image"].shape == (2, 24, 24, 3) and b["input_ids"].shape == (2, L)
      for k in range(2):
        if b["_mask"][k]:
          i, j = int(b["example_id"][k]), int(b["sentence_index"][k])
          assert decode(b["input_ids"][k], b["attention_mask"][k]) == f"ex{i} s{j}"
          seen.append((i, j))
        else:
          assert b["example_id"][k] == -1 and not b["image"][k].any()
          assert not b["attention_mask"][k].any() and not b["orig_size"][k].any()
  assert batches == [4, 4]  # ceil(7 / 2): the same number of steps on both processes.
  assert sorted(seen) == [(i, j) for i, n in enumerate(sentences) for j in range(n)]
  # Metrics over both shards: padding is skipped, each expression counted once.
  totals = []
  for process in (0, 1):
    m = metrics.RisMetrics(threshold=0.5)
    for b in loader.make_dataset(examples, cfg, char_tokenizer, 4, train=False,
                                 process_index=process, process_count=2).as_numpy_iterator():
      m.update(metrics.restore_original(b["mask"], b), transforms.original_masks(examples, b),
               valid=b["_mask"])
    totals.append(m.state())
  result = metrics.RisMetrics.from_state(totals[0] + totals[1]).result()
  assert result["count"] == 13


def test_train_sentence_sampling_random_per_ref_or_all():
  sentences = [3, 1, 2, 4]
  examples = synthetic(4, sentences)
  cfg = transforms.preprocess_config("dit", size=16, train_sizes=(16,))
  ds = loader.make_dataset(examples, cfg, char_tokenizer, 2, train=True, seed=5,
                           process_index=0, process_count=1)
  it = ds.as_numpy_iterator()
  ids = [next(it) for _ in range(20)]  # 10 epochs of 4 refs.
  order = np.concatenate([b["example_id"] for b in ids])
  chosen = np.concatenate([b["sentence_index"] for b in ids])
  for epoch in range(10):  # One item per ref per epoch, reshuffled.
    assert sorted(order[4 * epoch:4 * epoch + 4]) == [0, 1, 2, 3]
  assert len({tuple(order[4 * e:4 * e + 4]) for e in range(10)}) > 1
  for ex_id, n in enumerate(sentences):  # A random sentence each time.
    picks = chosen[order == ex_id]
    assert picks.max() < n and (n == 1 or len(set(picks)) > 1)
  again = next(loader.make_dataset(examples, cfg, char_tokenizer, 2, train=True, seed=5,
                                   process_index=0, process_count=1).as_numpy_iterator())
  np.testing.assert_array_equal(again["image"], ids[0]["image"])  # Reproducible.
  every = loader.make_dataset(examples, cfg, char_tokenizer, 2, train=True, seed=5,
                              train_sentences="all", process_index=0, process_count=1)
  it = every.as_numpy_iterator()
  pairs = [(int(i), int(j)) for b in [next(it) for _ in range(5)]
           for i, j in zip(b["example_id"], b["sentence_index"])]
  assert sorted(pairs) == [(i, j) for i, n in enumerate(sentences) for j in range(n)]


def test_training_batches_do_not_depend_on_the_process_count():
  """Global batch t is the same samples, in the same order, with the same augmentation, whether one
  process loads it or two processes load a half each (and after a resume on another process count)."""
  examples = synthetic(5, [2, 1, 3, 1, 2])
  cfg = transforms.preprocess_config("dit", size=16, train_sizes=(16, 12))
  make = lambda p, n, skip=0: loader.make_dataset(examples, cfg, char_tokenizer, 4, train=True, seed=2,
                                                  process_index=p, process_count=n,
                                                  skip_batches=skip).as_numpy_iterator()
  one = make(0, 1)
  halves = [make(0, 2), make(1, 2)]
  resumed = [make(0, 2, skip=3), make(1, 2, skip=3)]
  for step in range(6):  # 24 samples: almost 5 epochs of 5 refs, batches straddling epochs
    whole = next(one)
    parts = [next(h) for h in halves]
    for k in ("image", "mask", "input_ids", "example_id", "sentence_index"):
      np.testing.assert_array_equal(np.concatenate([p[k] for p in parts]), whole[k], err_msg=f"{k} @ {step}")
    if step >= 3:
      again = [next(r) for r in resumed]
      np.testing.assert_array_equal(np.concatenate([a["image"] for a in again]), whole["image"])
  ids = [loader.train_sample(i, 4, 0, 1, 5, seed=2)[1] for i in range(10)]
  assert sorted(ids[:5]) == list(range(5)) and sorted(ids[5:]) == list(range(5))  # epochs are permutations


def test_refcoco_files_through_the_pipeline_and_back(root):
  examples = refcoco.read_split(root, "refcoco", "train") + refcoco.read_split(
      root, "grefcoco", "train")
  ds = loader.make_dataset(examples, "dit", char_tokenizer, 3, train=False,
                           process_index=0, process_count=1)
  m = metrics.RisMetrics(threshold=0.5)
  n = 0
  for b in ds.as_numpy_iterator():
    restored = metrics.restore_original(b["mask"], b)
    gts = transforms.original_masks(examples, b)
    for k in np.flatnonzero(b["_mask"]):
      ex = examples[b["example_id"][k]]
      assert tuple(b["orig_size"][k]) == (ex["height"], ex["width"])
      assert restored[k].shape == gts[k].shape == (ex["height"], ex["width"])
      assert b["no_target"][k] == ex["no_target"]
      n += 1
    m.update(restored, gts, valid=b["_mask"])
  result = m.result()
  assert n == 5 + 3 and result["count"] == 8
  assert result["oIoU"] > 90 and result["N-acc"] == 100.0  # Resize round trip, empty kept.


def test_bad_inputs_are_clear_errors():
  good = synthetic(2, [1, 1])
  cfg = transforms.preprocess_config("dit", size=16, train_sizes=(16,))
  with pytest.raises(ValueError, match="Example 1 needs a 'mask'"):
    loader.make_dataset([good[0], {"image": good[1]["image"], "sentences": ["x"]}], cfg,
                        char_tokenizer, 2, train=False, process_index=0, process_count=1)
  with pytest.raises(ValueError, match="non-empty 'sentences'"):
    loader.make_dataset([dict(good[0], sentences=[])], cfg, char_tokenizer, 1, train=False,
                        process_index=0, process_count=1)
  with pytest.raises(ValueError, match="multiple of the process count 2"):
    loader.make_dataset(good, cfg, char_tokenizer, 3, train=False, process_index=0,
                        process_count=2)
  with pytest.raises(ValueError, match="Unknown preprocessing option.*sizes"):
    transforms.preprocess_config("dit", sizes=3)
  with pytest.raises(ValueError, match="must not exceed size"):
    transforms.preprocess_config("dit", size=256)
  with pytest.raises(ValueError, match="must be uint8"):
    transforms.preprocess(np.zeros((4, 4, 3), np.float32), None, "x", cfg)
  with pytest.raises(ValueError, match="mask values must be 0 or 1"):
    transforms.preprocess(good[0]["image"], good[0]["mask"] * 255, "x", cfg)
  with pytest.raises(ValueError, match="differs from the image"):
    transforms.preprocess(good[0]["image"], good[0]["mask"][:5], "x", cfg)

  bad_mask = loader.make_dataset([dict(good[0], mask=good[0]["mask"][:5])], cfg, char_tokenizer,
                                 1, train=False, process_index=0, process_count=1)
  with pytest.raises(Exception, match=r"Example 0 \(image array\): The mask's shape"):
    next(bad_mask.as_numpy_iterator())

  def ragged(texts):
    out = char_tokenizer(texts)
    n = max(len(t) for t in texts) + 2
    return {k: v[:, :n] for k, v in out.items()}

  ds = loader.make_dataset(good, cfg, ragged, 2, train=False, process_index=0,
                           process_count=1)
  with pytest.raises(Exception, match="fixed length"):
    next(ds.as_numpy_iterator())


def test_script_with_a_live_training_iterator_exits(tmp_path):
  """A global, unfinished iterator must not hang the interpreter at exit."""
  script = tmp_path / "live.py"
  script.write_text(textwrap.dedent("""
      import numpy as np
      from jaxris.data import loader, transforms
      tok = lambda texts: {"input_ids": np.zeros((len(texts), 4), np.int32)}
      ex = {"image": np.zeros((8, 8, 3), np.uint8), "mask": np.zeros((8, 8), np.uint8),
            "sentences": ["a"]}
      ds = loader.make_dataset([ex] * 4, transforms.preprocess_config(
          "dit", size=16, train_sizes=(16,)), tok, 2, train=True, process_index=0,
          process_count=1)
      it = ds.as_numpy_iterator()
      next(it)
      print("ok")
  """))
  done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                        timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_transforms_do_not_import_tensorflow():
  """Predictors preprocess with `transforms`; TensorFlow belongs to the loader alone."""
  code = ("import sys\n"
          "import jaxris.data.transforms, jaxris.data.image_io, jaxris.metrics\n"
          "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tensorflow'))")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert done.stdout.strip() == "[]"


def test_config_from_recipe_mapping_and_configdict():
  import ml_collections
  cfg = transforms.as_preprocess_config(ml_collections.ConfigDict(
      {"recipe": "sam", "size": 512, "train_sizes": [512]}))
  assert (cfg.size, cfg.train_sizes, cfg.pad, cfg.pixel_divisor) == (512, (512,),
                                                                      "bottom_right", 1.0)
  assert transforms.as_preprocess_config("evf").evf_size == 224
  dit_by_default = transforms.as_preprocess_config({"flip_prob": 0.0})
  assert dit_by_default.train_sizes[-1] == 320
  with pytest.raises(ValueError, match="Unknown recipe 'lavt'"):
    transforms.as_preprocess_config("lavt")
  with pytest.raises(ValueError, match="pad must be one of"):
    transforms.preprocess_config("dit", pad="left")


def test_skip_batches_resumes_the_same_stream():
  examples = synthetic(5, [2, 1, 3, 1, 2])
  cfg = transforms.preprocess_config("dit", size=16, train_sizes=(16,))
  args = (examples, cfg, char_tokenizer, 2, True, 9, 0, 1)  # The positional order.
  full = loader.make_dataset(*args).as_numpy_iterator()
  stream = [next(full) for _ in range(6)]
  resumed = loader.make_dataset(*args, skip_batches=4).as_numpy_iterator()
  for want in stream[4:]:
    got = next(resumed)
    np.testing.assert_array_equal(got["image"], want["image"])
    np.testing.assert_array_equal(got["example_id"], want["example_id"])
    np.testing.assert_array_equal(got["sentence_index"], want["sentence_index"])
