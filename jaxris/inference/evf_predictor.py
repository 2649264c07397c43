"""EVF-SAM prediction from converted weights: images and phrases -> mask logits at the original size.

  predictor = EvfPredictor("weights/evf_sam")           # python convert/evf_sam.py --src ... --out ...
  logits = predictor.predict(image, "zebra top left")    # float32 [H, W]; logits > 0 is the mask
  many = predictor.predict_batch([im1, im2], [["zebra", "sky"], ["the man"]])   # [n_i, H_i, W_i] each

Preprocessing is the pipeline's ``evf`` recipe (= inference.py's sam_preprocess and
beit3_preprocess), the text is tokenised as given (inference.py does not lowercase; eval.py's
``strip().lower()`` is the pipeline's job), and masks are SAM's postprocess_masks of the
single low-res mask. Unlike the official code, ``predict_batch`` runs SAM's image encoder once
over all images and BEiT-3 + the mask decoder once over all prompts; prompt counts and text
lengths are padded to buckets (padding is masked or discarded) so new counts rarely recompile.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxris.data.transforms import preprocess, preprocess_config
from jaxris.inference.export import read_recipe
from jaxris.models.beit3 import POSITION_OFFSET
from jaxris.models.sam.sam import postprocess_masks, scale_coords
from jaxris.weights import evf_sam

TEXT_LENGTH_STEP = 16  # token counts are padded to a multiple of this


def _bucket(n: int) -> int:
  """The smallest power of two >= n: the number of prompt rows compiled for n prompts."""
  return 1 << max(n - 1, 0).bit_length()


class EvfPredictor:
  """Loads a converted EVF-SAM directory once; ``predict`` / ``predict_batch`` many times."""

  def __init__(self, model_dir: str, dtype=None):
    self._setup(*evf_sam.load(model_dir, dtype))
    recipe = read_recipe(model_dir, required=False)  # a converted release has none: the official logits > 0
    if recipe is not None:  # a jaxris.train export: > 0 means sigmoid(logit) > the recipe's threshold
      self.cut = math.log(recipe["threshold"] / (1 - recipe["threshold"]))

  @classmethod
  def from_model(cls, model, tokenizer) -> "EvfPredictor":
    """A predictor around an EvfSam and its XlmrTokenizer already in memory."""
    predictor = cls.__new__(cls)
    predictor._setup(model, tokenizer)
    return predictor

  def _setup(self, model, tokenizer):
    self.cut = 0.0
    self.model, self.tokenizer = model, tokenizer
    self.img_size = model.cfg.sam.encoder.img_size
    self.preprocess = preprocess_config("evf", size=self.img_size, train_sizes=(self.img_size,),
                                        evf_size=model.cfg.beit3.img_size)
    graphdef, self._state = nnx.split(model)
    # Jitted per predictor over the graph only: a jit with `self` static would keep every predictor
    # (and its weights) alive in JAX's cache after the user drops it.
    self._encode = jax.jit(functools.partial(_encode, graphdef))
    self._decode = jax.jit(functools.partial(_decode, graphdef))
    # The last few single images' SAM embeddings: later phrases or prompts on the same image (a demo,
    # a notebook) skip SAM's image encoder, as the official SamPredictor.set_image does.
    self._cache: collections.OrderedDict[str, tuple] = collections.OrderedDict()
    self.cache_size = 4
    self.encodes = 0  # SAM image-encoder runs (images encoded)

  def _prepare(self, images):
    if len(images) == 1:
      image = np.ascontiguousarray(images[0])
      key = hashlib.sha1(image.tobytes() + str(image.shape).encode()).hexdigest()
      if key not in self._cache:
        self._cache[key] = self._encode_images([image])
        while len(self._cache) > self.cache_size:
          self._cache.popitem(last=False)
      self._cache.move_to_end(key)
      return self._cache[key]
    return self._encode_images(images)

  def _encode_images(self, images):
    inputs = [preprocess(np.asarray(image), None, "", self.preprocess, train=False) for image in images]
    embeddings = self._encode(self._state, jnp.asarray(np.stack([x["image"] for x in inputs])))
    self.encodes += len(images)
    return inputs, embeddings, jnp.asarray(np.stack([x["image_evf"] for x in inputs]))

  def _tokens(self, texts: list[str], rows: int):
    """[rows, L] ids and mask: the texts, then padding rows (copies of the first, decoded and discarded)."""
    tokens = self.tokenizer(list(texts))
    ids, mask = tokens["input_ids"], tokens["attention_mask"]
    longest = self.model.cfg.beit3.max_source_positions - POSITION_OFFSET  # rows of BEiT-3's text table
    length = max(min(-(-ids.shape[1] // TEXT_LENGTH_STEP) * TEXT_LENGTH_STEP, longest), ids.shape[1])
    out_ids = np.full((rows, length), self.tokenizer.pad_id, np.int32)
    out_mask = np.zeros((rows, length), np.int32)
    out_ids[:len(texts), :ids.shape[1]], out_mask[:len(texts), :ids.shape[1]] = ids, mask
    out_ids[len(texts):], out_mask[len(texts):] = out_ids[0], out_mask[0]
    return jnp.asarray(out_ids), jnp.asarray(out_mask)

  def _postprocess(self, low_res, inp) -> np.ndarray:
    resized, orig = tuple(int(v) for v in inp["resized_size"]), tuple(int(v) for v in inp["orig_size"])
    return np.asarray(postprocess_masks(jnp.asarray(low_res), self.img_size, resized, orig) - self.cut, np.float32)

  def predict_batch(self, images: list[np.ndarray], prompts: list[list[str]]) -> list[np.ndarray]:
    """uint8 RGB images [H_i, W_i, 3] and each image's phrases -> float32 logits [n_i, H_i, W_i]."""
    if len(images) != len(prompts):
      raise ValueError(f"{len(images)} images but {len(prompts)} prompt lists: give one list per image")
    if not images:
      return []
    texts = [t for p in prompts for t in p]
    index = np.array([i for i, p in enumerate(prompts) for _ in p], np.int32)
    inputs, embeddings, images_evf = self._prepare(images)
    low_res = np.zeros((0, 1, 1), np.float32)
    if texts:
      rows = _bucket(len(texts))
      ids, mask = self._tokens(texts, rows)
      padded_index = jnp.asarray(np.pad(index, (0, rows - len(texts))))
      low_res = np.asarray(self._decode(self._state, embeddings, images_evf, padded_index, ids, mask, None, None))
    return [self._postprocess(low_res[:len(texts)][index == i], inp) for i, inp in enumerate(inputs)]

  def predict_with_target(self, image: np.ndarray, text: str, points=None, boxes=None):
    """(predict(image, text, points, boxes), None): EVF-SAM has no no-target head."""
    return self.predict(image, text, points=points, boxes=boxes), None

  def predict(self, image: np.ndarray, text: str, points=None, boxes=None) -> np.ndarray:
    """uint8 RGB [H, W, 3] and a phrase -> float32 logits [H, W] at the original size (> 0: the mask).

    points: [K, 2] (x, y) foreground points or [K, 3] (x, y, label 1/0); boxes: one box
    (x0, y0, x1, y1). Both in original-image pixels; they join the text token as SAM prompts.
    """
    if points is None and boxes is None:
      return self.predict_batch([image], [[text]])[0][0]
    inputs, embeddings, images_evf = self._prepare([image])
    orig = tuple(int(v) for v in inputs[0]["orig_size"])
    sam_points = sam_boxes = None
    if points is not None:
      points = np.asarray(points, np.float32).reshape(-1, np.shape(points)[-1])
      labels = points[:, 2] if points.shape[1] == 3 else np.ones(len(points), np.float32)
      if points.shape[1] not in (2, 3) or not np.isin(labels, (0, 1)).all():
        raise ValueError(f"points must be [K, 2] (x, y) or [K, 3] (x, y, label 0/1), got {points.tolist()}")
      coords = scale_coords(points[:, :2], orig, self.img_size)
      sam_points = (jnp.asarray(coords)[None], jnp.asarray(labels.astype(np.int32))[None])
    if boxes is not None:
      box = np.asarray(boxes, np.float32).reshape(-1)
      if box.shape != (4,):
        raise ValueError(f"boxes must be one box (x0, y0, x1, y1), got {np.shape(boxes)}")
      sam_boxes = jnp.asarray(scale_coords(box.reshape(2, 2), orig, self.img_size).reshape(1, 4))
    ids, mask = self._tokens([text], 1)
    low_res = self._decode(self._state, embeddings, images_evf, jnp.zeros((1,), jnp.int32), ids, mask,
                           sam_points, sam_boxes)
    return self._postprocess(np.asarray(low_res), inputs[0])[0]


def _encode(graphdef, state, images):
  return nnx.merge(graphdef, state).visual_model.image_encoder(images)


def _decode(graphdef, state, embeddings, images_evf, image_index, input_ids, attention_mask, points, boxes):
  model = nnx.merge(graphdef, state)
  prompt = model.prompt_embedding(jnp.take(images_evf, image_index, axis=0), input_ids, attention_mask)
  low_res, _ = model.decode(embeddings, prompt, points, boxes, image_index)
  return low_res[:, 0]
