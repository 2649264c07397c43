"""tf.data input pipeline for referring segmentation: load, resize + pad, augment, tokenize,
batch, shard per process.

Recipes (`preprocess_config(recipe, **overrides)`; every field can be overridden):

  dit  wysnzzzz/DIT datasets/dataloader.py + datasets/transforms.py. Longest side 512
       (Python `round` of the scaled sides), PIL bilinear; ImageNet mean/std on [0, 1];
       the normalised image is zero-padded to 512x512 with the offset
       round(d / 2 - 0.1) on each axis (centred). Training: longest side drawn from
       {512, 480, ..., 320}; colour jitter 0.4/0.4/0.4 as PIL ImageEnhance brightness,
       contrast and saturation in random order, applied with probability 0.8; horizontal
       flip with probability 0.5 that swaps "left" and "right" in the sentence (the
       official code swaps substrings, so "bright" becomes "bleft": flip_swap='substring';
       'word' swaps whole words only). Gaussian blur (PIL radius ~ U(0.1, 2), p=0.5)
       exists but is off in every official config (AUG_BLUR: False), so blur_prob=0; the
       official random crop and random translation are off too and not implemented.
       Masks are resized like the image (PIL bilinear of the 0/255 mask) and kept soft
       in [0, 1], as ToTensor gives them to the official BCE loss.
  sam  segment_anything ResizeLongestSide(1024): sides int(x + 0.5), PIL bilinear; SAM's
       pixel mean/std on [0, 255]; zero padding at the bottom and right. No augmentation.
  evf  hustvl/EVF-SAM utils/dataset.py: `sam` plus a second view `image_evf`, the whole
       image squashed to 224x224 by bicubic interpolation without antialiasing
       (torchvision Resize(..., interpolation=3, antialias=None) on a float tensor),
       mean = std = 0.5 on [0, 1]. Evaluation sentences are `.strip().lower()`-ed as in
       EVF-SAM's ValDataset.

Deliberate differences: images are decoded by PIL (`jaxris.data.image_io`, the same reader
prediction uses) for every recipe (EVF-SAM uses cv2.imread; the two JPEG decoders can differ by a grey level here and
there), and for sam/evf the mask is resized into the padded S x S frame like the image
(EVF-SAM computes its loss on masks at the original size instead).

Every geometric and photometric step calls the same PIL operation as the official code,
so images match it bit for bit; the bicubic squash and the array steps are float32
numpy. tf.data runs them through `tf.numpy_function` in parallel (PIL releases the GIL)
and does the sharding, shuffling, batching and prefetching.

Tokenization happens inside the per-example function, after the flip has edited the
sentence: `tokenizer(texts: list[str]) -> dict(input_ids=int[N, L], attention_mask=...,
...)` is called with one sentence at a time, under a lock (Hugging Face fast tokenizers
are not safe to call from several threads at once). Every 2-D array it returns becomes
a batch field of the same name; L must be the same for every call (pad to a fixed
length).

Batches (`make_dataset(...).as_numpy_iterator()`) are dicts of numpy arrays, B being
the per-process batch size `batch_size // process_count`:
  image          float32 [B, S, S, 3]  normalised, padded
  mask           float32 [B, S, S]     in [0, 1] (soft at edges with bilinear resizing)
  input_ids, attention_mask, ...      int32 [B, L] from the tokenizer
  image_evf      float32 [B, 224, 224, 3]  (evf recipe only)
  orig_size      int32 [B, 2]  (height, width) of the original image
  resized_size   int32 [B, 2]  (height, width) after resizing, before padding
  pad_offset     int32 [B, 2]  (top, left) of the resized image inside the S x S input
  example_id     int32 [B]     index into `examples`; -1 for padding
  sentence_index int32 [B]     which of the example's sentences was used
  no_target      bool [B]      the example's `no_target` flag (gRefCOCO)
  _mask          bool [B]      False for the padding examples of evaluation batches

`jaxris.metrics.restore_original(pred, batch)` undoes the resize and padding;
`original_masks(examples, batch)` gives the ground truth at the original size.

Multi-host: each process reads a contiguous shard of the (expanded) examples, as
big_vision's input_pipeline does with tfds.even_splits. Training repeats its shard
forever, reshuffled each epoch. Evaluation pads every shard with masked examples
(`_mask` False, example_id -1) to the same number of full batches,
ceil(max shard / B), so all processes run the same number of steps and every example
is counted exactly once (the official DIT/EVF loaders use torch's DistributedSampler,
which instead repeats examples to even out the shards).
"""

import atexit
import dataclasses
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from jaxris.data.image_io import read_image, to_rgb_uint8
from jaxris.ops.resize import resize_hw

__all__ = ["PreprocessConfig", "RECIPES", "preprocess_config", "preprocess",
           "swap_left_right", "process_range", "eval_positions", "expand_examples",
           "make_dataset", "original_masks"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """How one example becomes model input. Defaults are the DIT recipe."""
  size: int = 512  # S: the square model input.
  train_sizes: tuple[int, ...] = (512, 480, 448, 416, 384, 352, 320)  # Longest side, training.
  resize_rounding: str = "round"  # "round": Python round (DIT); "half_up": int(x + .5) (SAM).
  pad: str = "center"  # "center": DIT's round(d / 2 - 0.1) offsets; "bottom_right": SAM.
  pixel_divisor: float = 255.0  # Pixels are divided by this (ToTensor) before (x - mean) / std.
  mean: tuple[float, float, float] = IMAGENET_MEAN
  std: tuple[float, float, float] = IMAGENET_STD
  mask_resample: str = "bilinear"  # "bilinear" (soft, official) or "nearest".
  # Training augmentation (ignored in evaluation).
  jitter: tuple[float, float, float] = (0.4, 0.4, 0.4)  # Brightness, contrast, saturation.
  jitter_prob: float = 0.8
  blur_prob: float = 0.0
  blur_sigma: tuple[float, float] = (0.1, 2.0)
  flip_prob: float = 0.5
  flip_swap: str = "substring"  # "substring" (official), "word", or "none".
  # EVF-SAM's BEiT-3 view: 0 for none, else the side of the bicubic squash.
  evf_size: int = 0
  evf_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
  evf_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
  eval_strip_lower: bool = False  # EVF-SAM evaluates on sentence.strip().lower().

  def __post_init__(self):
    _check_choice("resize_rounding", self.resize_rounding, ("round", "half_up"))
    _check_choice("pad", self.pad, ("center", "bottom_right"))
    _check_choice("mask_resample", self.mask_resample, ("bilinear", "nearest"))
    _check_choice("flip_swap", self.flip_swap, ("substring", "word", "none"))
    if self.size <= 0 or not self.train_sizes or min(self.train_sizes) <= 0:
      raise ValueError(f"size and train_sizes must be positive, got {self.size}, "
                       f"{self.train_sizes}.")
    if max(self.train_sizes) > self.size:
      raise ValueError(f"train_sizes {self.train_sizes} must not exceed size {self.size}: "
                       "the resized image is padded to size x size.")
    for name in ("jitter_prob", "blur_prob", "flip_prob"):
      if not 0 <= getattr(self, name) <= 1:
        raise ValueError(f"{name} must be a probability, got {getattr(self, name)}.")


def _check_choice(name, value, choices):
  if value not in choices:
    raise ValueError(f"{name} must be one of {choices}, got {value!r}.")


_NO_AUGMENTATION = dict(jitter_prob=0.0, blur_prob=0.0, flip_prob=0.0)
_SAM = dict(size=1024, train_sizes=(1024,), resize_rounding="half_up", pad="bottom_right",
            pixel_divisor=1.0, mean=SAM_PIXEL_MEAN, std=SAM_PIXEL_STD, **_NO_AUGMENTATION)
RECIPES = {
    "dit": {},
    "sam": _SAM,
    "evf": dict(_SAM, evf_size=224, eval_strip_lower=True),
}


def preprocess_config(recipe: str = "dit", **overrides) -> PreprocessConfig:
  """The named recipe's PreprocessConfig with `overrides` applied."""
  if recipe not in RECIPES:
    raise ValueError(f"Unknown recipe {recipe!r}; expected one of {', '.join(RECIPES)}.")
  fields = {f.name for f in dataclasses.fields(PreprocessConfig)}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"Unknown preprocessing option(s) {unknown}; valid: {sorted(fields)}.")
  values = dict(RECIPES[recipe], **overrides)
  for key, value in values.items():  # ConfigDicts and JSON give lists for tuples.
    if isinstance(value, list):
      values[key] = tuple(value)
  return PreprocessConfig(**values)


def _as_config(config) -> PreprocessConfig:
  """A PreprocessConfig from itself, a recipe name, or a mapping {recipe=..., field=...}."""
  if isinstance(config, PreprocessConfig):
    return config
  if isinstance(config, str):
    return preprocess_config(config)
  if isinstance(config, Mapping) or hasattr(config, "to_dict"):
    values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
    return preprocess_config(values.pop("recipe", "dit"), **values)
  raise TypeError(f"preprocess_config must be a PreprocessConfig, a recipe name or a mapping, "
                  f"got {type(config).__name__}.")


# ------------------------------------------------------------------------------------------
# One example.


def _binary_mask(mask, shape, where):
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[2] == 1:
    mask = mask[:, :, 0]
  if mask.shape != tuple(shape):
    raise ValueError(f"{where}: mask shape {mask.shape} differs from the image's {tuple(shape)}.")
  if mask.dtype != np.bool_:
    if mask.size and (mask.min() < 0 or mask.max() > 1):
      raise ValueError(f"{where}: mask values must be 0 or 1, found range "
                       f"[{mask.min()}, {mask.max()}].")
  return mask.astype(bool)


def swap_left_right(text: str, mode: str = "substring") -> str:
  """Swaps "left" and "right" in `text`, as the horizontal flip does.

  "substring" is the official DIT behaviour (str.replace, so "bright" -> "bleft");
  "word" swaps whole words only, keeping a leading capital; "none" leaves the text.
  """
  if mode == "substring":
    return text.replace("right", "\0").replace("left", "right").replace("\0", "left")
  if mode == "word":
    def swap(m):
      word = m.group(0)
      other = "right" if word.lower() == "left" else "left"
      return other.capitalize() if word[0].isupper() else other
    return re.sub(r"\b(?:[Ll]eft|[Rr]ight)\b", swap, text)
  if mode == "none":
    return text
  raise ValueError(f"flip_swap must be 'substring', 'word' or 'none', got {mode!r}.")


def _resized_shape(height, width, longest, rounding):
  """(h, w) with the longest side `longest`, rounded as the recipe's official code does."""
  if rounding == "round":  # DIT resize_according_to_long_side.
    ratio = float(longest / float(max(height, width)))
    new_h, new_w = round(height * ratio), round(width * ratio)
  else:  # SAM ResizeLongestSide.get_preprocess_shape.
    scale = longest * 1.0 / max(height, width)
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
  return max(new_h, 1), max(new_w, 1)


def _pad_offsets(size, new_h, new_w, pad):
  if pad == "center":  # DIT NormalizeAndPad without translation.
    return round((size - new_h) / 2.0 - 0.1), round((size - new_w) / 2.0 - 0.1)
  return 0, 0


def _jitter(img, cfg, rng):
  """DIT ColorJitter: with prob. jitter_prob, PIL brightness/contrast/saturation in random
  order, each with a factor ~ U(1 - s, 1 + s)."""
  if rng.random() >= cfg.jitter_prob:
    return img
  enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
  for k in rng.permutation(3):
    strength = cfg.jitter[k]
    img = enhancers[k](img).enhance(rng.uniform(1 - strength, 1 + strength))
  return img


def _evf_view(image, cfg):
  """EVF-SAM's BEiT-3 input: ToTensor, bicubic squash to evf_size^2, Normalize."""
  x = image.astype(np.float32) / np.float32(255)
  if x.shape[:2] != (cfg.evf_size, cfg.evf_size):  # torchvision skips same-size resizes.
    x = resize_hw(x, (cfg.evf_size, cfg.evf_size), "bicubic")
  return (x - np.float32(cfg.evf_mean)) / np.float32(cfg.evf_std)


def preprocess(image, mask, sentence: str, config, *, train: bool = False,
               rng: np.random.Generator | None = None) -> dict:
  """Turns one (image, mask, sentence) into model input with the recipe's steps.

  Args:
    image: uint8 (or uint16) RGB, grayscale or RGBA array (`image_io.to_rgb_uint8`).
    mask: HxW {0, 1} (or bool) array, or None (an all-zero mask).
    sentence: the referring expression.
    config: a PreprocessConfig, recipe name or mapping.
    train: apply the training augmentation (needs `rng`).
    rng: numpy Generator for the random choices.

  Returns:
    dict with image float32 [S,S,3], mask float32 [S,S], text (str, after the flip),
    orig_size, resized_size, pad_offset (int32 [2]), flipped (bool) and, for EVF,
    image_evf float32 [E,E,3].
  """
  cfg = _as_config(config)
  image = to_rgb_uint8(image)
  height, width = image.shape[:2]
  mask = (np.zeros((height, width), bool) if mask is None
          else _binary_mask(mask, (height, width), "preprocess"))
  if train and rng is None:
    raise ValueError("preprocess(train=True) needs an rng (np.random.Generator).")
  text = sentence
  if not train and cfg.eval_strip_lower:
    text = text.strip().lower()

  longest = cfg.train_sizes[rng.integers(len(cfg.train_sizes))] if train else cfg.size
  new_h, new_w = _resized_shape(height, width, longest, cfg.resize_rounding)
  img = Image.fromarray(image)
  msk = Image.fromarray(mask.astype(np.uint8) * 255)
  if (new_h, new_w) != (height, width):
    img = img.resize((new_w, new_h), Image.BILINEAR)
    resample = Image.BILINEAR if cfg.mask_resample == "bilinear" else Image.NEAREST
    msk = msk.resize((new_w, new_h), resample)

  flipped = False
  if train:
    img = _jitter(img, cfg, rng)
    if rng.random() < cfg.blur_prob:
      img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(*cfg.blur_sigma)))
    if rng.random() < cfg.flip_prob:
      flipped = True
      img = img.transpose(Image.FLIP_LEFT_RIGHT)
      msk = msk.transpose(Image.FLIP_LEFT_RIGHT)
      text = swap_left_right(text, cfg.flip_swap)

  top, left = _pad_offsets(cfg.size, new_h, new_w, cfg.pad)
  out_image = np.zeros((cfg.size, cfg.size, 3), np.float32)
  pixels = out_image[top:top + new_h, left:left + new_w]  # Normalised in place: a view.
  np.divide(np.asarray(img), np.float32(cfg.pixel_divisor), out=pixels, dtype=np.float32)
  pixels -= np.float32(cfg.mean)
  pixels /= np.float32(cfg.std)
  out_mask = np.zeros((cfg.size, cfg.size), np.float32)
  out_mask[top:top + new_h, left:left + new_w] = np.asarray(msk, np.float32) / 255

  result = {
      "image": out_image,
      "mask": out_mask,
      "text": text,
      "orig_size": np.array([height, width], np.int32),
      "resized_size": np.array([new_h, new_w], np.int32),
      "pad_offset": np.array([top, left], np.int32),
      "flipped": flipped,
  }
  if cfg.evf_size:
    result["image_evf"] = _evf_view(image[:, ::-1] if flipped else image, cfg)
  return result


# ------------------------------------------------------------------------------------------
# Sampling and sharding.


def expand_examples(examples: Sequence[dict], per_sentence: bool) -> np.ndarray:
  """int64 [N, 2] (example index, sentence index) items; sentence -1 = draw one at random."""
  items = []
  for i, ex in enumerate(examples):
    n = len(ex["sentences"])
    items.extend([(i, j) for j in range(n)] if per_sentence else [(i, -1)])
  return np.array(items, np.int64).reshape(-1, 2)


def process_range(num_items: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of this process's contiguous shard; sizes differ by at most one."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  base, extra = divmod(num_items, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def eval_positions(num_items: int, local_batch_size: int, process_index: int,
                   process_count: int) -> np.ndarray:
  """This process's item positions for evaluation, padded with -1 to full batches.

  Every process gets ceil(ceil(num_items / process_count) / local_batch_size) batches,
  so all run the same number of steps; the -1 entries become masked padding examples.
  """
  start, stop = process_range(num_items, process_index, process_count)
  longest = -(-num_items // process_count)
  num_batches = max(1, math.ceil(longest / local_batch_size))
  positions = np.full(num_batches * local_batch_size, -1, np.int64)
  positions[:stop - start] = np.arange(start, stop)
  return positions


# ------------------------------------------------------------------------------------------
# tf.data.


class _ExitDrain:
  """Lets the interpreter exit while a tf.data iterator of ours is still alive.

  When a script ends with an unfinished iterator in a global variable, Python's
  finalization destroys it, and TF's iterator destructor waits for the in-flight
  numpy_function calls, which can no longer take the GIL: the process hangs. An atexit
  hook (atexit runs before finalization, while threads still get the GIL) makes every
  new call return a dummy element at once and waits until no call has been in flight
  for a while; the pipeline's buffers are then full and it stays idle.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self._inflight = 0
    self.exiting = False
    self._registered = False

  def register(self):
    with self._lock:
      if not self._registered:
        atexit.register(self.drain)
        self._registered = True

  def enter(self) -> bool:
    with self._lock:
      self._inflight += 1
      return not self.exiting

  def leave(self):
    with self._lock:
      self._inflight -= 1

  def drain(self, quiet_s=0.05, timeout_s=30.0):
    self.exiting = True
    deadline = time.monotonic() + timeout_s
    quiet_since = None
    while time.monotonic() < deadline:
      with self._lock:
        idle = self._inflight == 0
      now = time.monotonic()
      quiet_since = (quiet_since or now) if idle else None
      if quiet_since is not None and now - quiet_since >= quiet_s:
        return
      time.sleep(0.005)


_EXIT_DRAIN = _ExitDrain()


class _Tokenize:
  """Calls the tokenizer on one sentence at a time, under a lock, checking its output."""

  def __init__(self, tokenizer):
    self._tokenizer = tokenizer
    self._lock = threading.Lock()
    probe = self._call("probe")
    self.length = next(iter(probe.values())).shape[0]
    self.keys = tuple(probe)

  def _call(self, text):
    with self._lock:
      out = self._tokenizer([text])
    arrays = {}
    for key, value in out.items():  # Integer [1, L] arrays (or nested lists) become fields.
      try:
        value = np.asarray(value)
      except (TypeError, ValueError):
        continue
      if value.ndim == 2 and value.shape[0] == 1 and (
          np.issubdtype(value.dtype, np.integer) or value.dtype == np.bool_):
        arrays[key] = value[0].astype(np.int32)
    if "input_ids" not in arrays:
      raise ValueError("The tokenizer must return a dict with 2-D arrays [N, L], at least "
                       f"input_ids; got keys {sorted(out)}.")
    lengths = {v.shape[0] for v in arrays.values()}
    if len(lengths) != 1:
      raise ValueError(f"The tokenizer's arrays have different lengths {sorted(lengths)}.")
    return arrays

  def __call__(self, text):
    arrays = self._call(text)
    length = next(iter(arrays.values())).shape[0]
    if length != self.length or tuple(arrays) != self.keys:
      raise ValueError(f"The tokenizer returned length {length} and keys {tuple(arrays)} for "
                       f"{text!r}, but {self.length} and {self.keys} before: it must pad every "
                       "sentence to one fixed length.")
    return arrays


def _check_examples(examples):
  if not examples:
    raise ValueError("make_dataset got no examples.")
  for i, ex in enumerate(examples):
    problems = []
    if "image" not in ex and "image_path" not in ex:
      problems.append("an 'image' array or an 'image_path'")
    if "mask" not in ex:
      problems.append("a 'mask'")
    sentences = ex.get("sentences")
    if (not isinstance(sentences, (list, tuple)) or not sentences
        or not all(isinstance(s, str) for s in sentences)):
      problems.append("a non-empty 'sentences' list of str")
    if problems:
      raise ValueError(f"Example {i} needs {' and '.join(problems)}; it has keys {sorted(ex)}.")


def make_dataset(examples: Sequence[dict], preprocess_config, tokenizer, batch_size: int,
                 train: bool, seed: int = 0, process_index: int | None = None,
                 process_count: int | None = None, *, train_sentences: str = "random",
                 num_parallel_calls: int | None = None, prefetch: int = 2,
                 skip_batches: int = 0):
  """A tf.data.Dataset of batches (dicts; fields in the module docstring).

  Args:
    examples: dicts as `jaxris.data.refcoco.read_split` returns (or RefShapes): an
      'image' uint8 array or an 'image_path', 'mask' (HxW {0,1} array or RleMask) and
      'sentences'; 'no_target' is optional.
    preprocess_config: PreprocessConfig, recipe name ('dit', 'sam', 'evf') or mapping.
    tokenizer: callable list[str] -> dict of int arrays [N, L] (module docstring).
    batch_size: the global batch size; each process yields batch_size // process_count.
    train: True: infinite, shuffled each epoch, augmented, drop_remainder. False: one
      pass, one example per sentence, padded with masked examples (`_mask` False).
    seed: seeds the shuffle and every augmentation; the stream is reproducible.
    process_index, process_count: this process's shard; default jax.process_index() and
      jax.process_count().
    train_sentences: "random": one item per example (ref) with a sentence drawn at random
      each time it is seen (the DIT loader's way); "all": one item per sentence.
    num_parallel_calls: parallel per-example calls (default tf.data.AUTOTUNE).
    prefetch: batches to prefetch.
    skip_batches: training only: start the stream this many batches in, without loading the
      skipped examples (a resumed run continues exactly where the checkpoint left off).
  """
  import tensorflow as tf  # Host-only; keep TF away from any accelerator.
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError:  # TF already initialised (by an earlier call): leave it as set then.
    pass

  if process_index is None or process_count is None:
    import jax
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the process "
                     f"count {process_count}.")
  if train_sentences not in ("random", "all"):
    raise ValueError(f"train_sentences must be 'random' or 'all', got {train_sentences!r}.")
  _check_examples(examples)
  cfg = _as_config(preprocess_config)
  tokenize = _Tokenize(tokenizer)
  local_batch = batch_size // process_count
  items = expand_examples(examples, per_sentence=not train or train_sentences == "all")

  specs = {  # name -> (numpy dtype, shape)
      "image": (np.float32, (cfg.size, cfg.size, 3)),
      "mask": (np.float32, (cfg.size, cfg.size)),
      **{k: (np.int32, (tokenize.length,)) for k in tokenize.keys},
      **({"image_evf": (np.float32, (cfg.evf_size, cfg.evf_size, 3))} if cfg.evf_size else {}),
      "orig_size": (np.int32, (2,)),
      "resized_size": (np.int32, (2,)),
      "pad_offset": (np.int32, (2,)),
      "example_id": (np.int32, ()),
      "sentence_index": (np.int32, ()),
      "no_target": (np.bool_, ()),
      "_mask": (np.bool_, ()),
  }
  names = tuple(specs)

  def padding():  # Evaluation padding: zeros, example_id -1, _mask False.
    return tuple(np.full(shape, -1 if k == "example_id" else 0, dtype)
                 for k, (dtype, shape) in specs.items())

  def load(position, counter):
    try:
      if not _EXIT_DRAIN.enter() or position < 0:
        return padding()
      return load_example(position, counter)
    finally:
      _EXIT_DRAIN.leave()

  def load_example(position, counter):
    ex_index, sentence_index = (int(v) for v in items[position])
    ex = examples[ex_index]
    rng = np.random.default_rng([seed, process_index, int(counter)]) if train else None
    if sentence_index < 0:
      sentence_index = int(rng.integers(len(ex["sentences"])))
    where = f"example {ex_index} ({ex.get('image_path', 'image array')})"
    image = to_rgb_uint8(ex["image"]) if "image" in ex else read_image(ex["image_path"])
    mask = _binary_mask(ex["mask"], image.shape[:2], where)
    out = preprocess(image, mask, ex["sentences"][sentence_index], cfg, train=train, rng=rng)
    out.update(tokenize(out.pop("text")))
    out.update(example_id=np.int32(ex_index), sentence_index=np.int32(sentence_index),
               no_target=np.bool_(ex.get("no_target", False)), _mask=np.bool_(True))
    return tuple(np.asarray(out[k], dtype=specs[k][0]) for k in names)

  def tf_load(counter, position):
    values = tf.numpy_function(load, [position, counter],
                               [tf.as_dtype(dtype) for dtype, _ in specs.values()],
                               stateful=False)
    return {k: tf.ensure_shape(v, specs[k][1]) for k, v in zip(names, values)}

  _EXIT_DRAIN.register()
  start, stop = process_range(len(items), process_index, process_count)
  if train:
    if stop - start < local_batch:
      raise ValueError(f"Process {process_index} has {stop - start} training items, fewer than "
                       f"its batch size {local_batch}.")
    ds = tf.data.Dataset.from_tensor_slices(np.arange(start, stop, dtype=np.int64))
    ds = ds.shuffle(stop - start, seed=seed + 7919 * process_index,
                    reshuffle_each_iteration=True).repeat()
  else:
    positions = eval_positions(len(items), local_batch, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(positions)
  ds = ds.enumerate()  # The counter seeds each element's augmentation.
  if train and skip_batches:
    ds = ds.skip(skip_batches * local_batch)  # before the map: skipped examples are never loaded
  ds = ds.map(tf_load, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  return ds.prefetch(prefetch) if prefetch else ds


def original_masks(examples: Sequence[dict], batch: Mapping) -> list[np.ndarray]:
  """Ground-truth masks at the original image size for a batch, as uint8 HxW arrays.

  Padding examples (`_mask` False) get a 0x0 array; metrics skip them.
  """
  valid = np.asarray(batch["_mask"], bool)
  return [np.asarray(examples[int(i)]["mask"], np.uint8) if v else np.zeros((0, 0), np.uint8)
          for i, v in zip(np.asarray(batch["example_id"]), valid)]
