"""One example -> model input: the official preprocessing recipes, in numpy and PIL.

No TensorFlow here (the predictors import this module); `jaxris.data.loader` runs
`preprocess` inside tf.data for training and evaluation.

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
  bridge  the SAM+CLIP bridge (hitachi-rd-cv/dfam refcoco_mapper): every image *stretched* to S x S
       (PIL bilinear, aspect ratio not kept, no padding, no augmentation), SAM's mean/std on
       [0, 255]; the model makes its CLIP view from this image.
  evf  hustvl/EVF-SAM utils/dataset.py: `sam` plus a second view `image_evf`, the whole
       image squashed to 224x224 by bicubic interpolation without antialiasing
       (torchvision Resize(..., interpolation=3, antialias=None) on a float tensor),
       mean = std = 0.5 on [0, 1]. Evaluation sentences are `.strip().lower()`-ed as in
       EVF-SAM's ValDataset.

Deliberate differences: images are decoded by PIL (`jaxris.data.image_io`, the reader that
prediction uses too) for every recipe (EVF-SAM uses cv2.imread; the two JPEG decoders can
differ by a grey level here and there), and for sam/evf the mask is resized into the padded
S x S frame like the image (EVF-SAM computes its loss on masks at the original size instead).

Every geometric and photometric step calls the same PIL operation as the official code, so
images match it bit for bit; the bicubic squash is `jaxris.ops.resize.resize_hw` and the
array steps are float32 numpy.

`jaxris.metrics.restore_original(pred, inputs)` undoes the resize and padding;
`original_masks(examples, batch)` gives the ground truth at the original size.
"""

import dataclasses
import re
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from jaxris.data.image_io import to_rgb_uint8
from jaxris.ops.resize import resize_hw

__all__ = ["PreprocessConfig", "RECIPES", "preprocess_config", "as_preprocess_config",
           "preprocess", "swap_left_right", "original_masks"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
  """How one example becomes model input. Defaults are the DIT recipe."""
  size: int = 512  # S: the square model input.
  train_sizes: tuple[int, ...] = (512, 480, 448, 416, 384, 352, 320)  # Longest side, training.
  resize_rounding: str = "round"  # "round": Python round (DIT); "half_up": int(x + .5) (SAM); "stretch": S x S.
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
    _check_choice("resize_rounding", self.resize_rounding, ("round", "half_up", "stretch"))
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
    "bridge": dict(_SAM, resize_rounding="stretch"),
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


def as_preprocess_config(config) -> PreprocessConfig:
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


def _binary_mask(mask, shape):
  mask = np.asarray(mask)
  if mask.ndim == 3 and mask.shape[2] == 1:
    mask = mask[:, :, 0]
  if mask.shape != tuple(shape):
    raise ValueError(f"The mask's shape {mask.shape} differs from the image's {tuple(shape)}.")
  if mask.dtype != np.bool_:
    if mask.size and (mask.min() < 0 or mask.max() > 1):
      raise ValueError(f"The mask values must be 0 or 1, found range "
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
  """(h, w) with the longest side `longest`, rounded as the recipe's official code does (or stretched)."""
  if rounding == "stretch":  # the bridge: detectron2's T.Resize((S, S))
    return longest, longest
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
  cfg = as_preprocess_config(config)
  image = to_rgb_uint8(image)
  height, width = image.shape[:2]
  mask = (np.zeros((height, width), bool) if mask is None
          else _binary_mask(mask, (height, width)))
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


def original_masks(examples: Sequence[dict], batch: Mapping) -> list[np.ndarray]:
  """Ground-truth masks at the original image size for a batch, as uint8 HxW arrays.

  Padding examples (`_mask` False) get a 0x0 array; metrics skip them.
  """
  valid = np.asarray(batch["_mask"], bool)
  return [np.asarray(examples[int(i)]["mask"], np.uint8) if v else np.zeros((0, 0), np.uint8)
          for i, v in zip(np.asarray(batch["example_id"]), valid)]
