"""The tf.data loader: examples -> shuffled, augmented, tokenized batches, sharded per process.

`make_dataset` runs `jaxris.data.transforms.preprocess` on each example through
`tf.numpy_function`, in parallel (PIL releases the GIL); tf.data does the sharding,
shuffling, batching and prefetching. TensorFlow is imported only when a dataset is made,
and never sees an accelerator.

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
  no_target      bool [B]      the example's `no_target` flag (gRefCOCO, RefShapes' no-target splits)
  category       int32 [B]     the example's first `category_ids` entry (COCO id; RefShapes kind), -1 if none
  _mask          bool [B]      False for the padding examples of evaluation batches

`jaxris.metrics.restore_original(pred, batch)` undoes the resize and padding;
`jaxris.data.transforms.original_masks(examples, batch)` gives the ground truth at the
original size.

Multi-host training: one global stream of samples, the same whatever the process count:
epoch e is a permutation of all items seeded by (seed, e), epochs follow one another, and
global batch t is samples [t * B_global, (t + 1) * B_global) of that stream; process p
loads its contiguous slice of each global batch, and every sample's augmentation is seeded
by its global index. So 2 processes x 2 devices see exactly the batches of 1 process x 4,
and a checkpoint resumes on any number of processes. Evaluation: each process reads a
contiguous shard of the (expanded) examples, as big_vision's input_pipeline does with
tfds.even_splits, and every shard is padded with masked examples
(`_mask` False, example_id -1) to the same number of full batches,
ceil(max shard / B), so all processes run the same number of steps and every example
is counted exactly once (the official DIT/EVF loaders use torch's DistributedSampler,
which instead repeats examples to even out the shards).
"""

import atexit
import math
import threading
import time
from collections.abc import Sequence

import numpy as np

from jaxris.data.image_io import read_image
from jaxris.data.transforms import as_preprocess_config, preprocess

__all__ = ["expand_examples", "process_range", "train_sample", "eval_positions", "make_dataset"]


# ------------------------------------------------------------------------------------------
# Sampling and sharding.


def expand_examples(examples: Sequence[dict], per_sentence: bool) -> np.ndarray:
  """int64 [N, 2] (example index, sentence index) items; sentence -1 = draw one at random."""
  if not per_sentence:  # one item per example: no need to read (or render) any of them
    return np.stack([np.arange(len(examples)), np.full(len(examples), -1)], axis=1).astype(np.int64)
  items = []
  for i, ex in enumerate(examples):
    n = len(ex["sentences"])
    items.extend((i, j) for j in range(n))
  return np.array(items, np.int64).reshape(-1, 2)


def process_range(num_items: int, process_index: int, process_count: int) -> tuple[int, int]:
  """[start, stop) of this process's contiguous shard; sizes differ by at most one."""
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count}).")
  base, extra = divmod(num_items, process_count)
  start = process_index * base + min(process_index, extra)
  return start, start + base + (process_index < extra)


def train_sample(local_index: int, local_batch_size: int, process_index: int, process_count: int,
                 num_items: int, seed: int, permutations: dict | None = None) -> tuple[int, int]:
  """(global sample index, item position) of this process's `local_index`-th training sample.

  The global stream: epoch e is np.random.default_rng([seed, e]).permutation(num_items); global
  batch t holds samples t * G .. t * G + G - 1 (G = local_batch_size * process_count), of which
  process p loads the p-th contiguous slice.
  """
  batch, j = divmod(local_index, local_batch_size)
  k = (batch * process_count + process_index) * local_batch_size + j
  epoch, offset = divmod(k, num_items)
  cache = permutations if permutations is not None else {}
  if epoch not in cache:
    if len(cache) > 2:  # the stream moves forward: keep the current and next epochs only
      cache.pop(min(cache))
    cache[epoch] = np.random.default_rng([seed, epoch]).permutation(num_items)
  return k, int(cache[epoch][offset])


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
  if getattr(examples, "valid_by_construction", False):  # e.g. RefShapes' LazyExamples: reading renders
    return
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
      skipped examples (a resumed run, on any number of processes, continues exactly where the
      checkpoint left off).
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
  cfg = as_preprocess_config(preprocess_config)
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
      "category": (np.int32, ()),
      "_mask": (np.bool_, ()),
  }
  names = tuple(specs)

  def padding():  # Evaluation padding: zeros, example_id -1, _mask False.
    return tuple(np.full(shape, -1 if k in ("example_id", "category") else 0, dtype)
                 for k, (dtype, shape) in specs.items())

  permutations, lock = {}, threading.Lock()

  def load(position, counter):
    try:
      if not _EXIT_DRAIN.enter() or position < 0:
        return padding()
      if train:  # position and augmentation from the global stream (module docstring)
        with lock:
          counter, position = train_sample(int(counter), local_batch, process_index, process_count,
                                           len(items), seed, permutations)
      return load_example(position, counter)
    finally:
      _EXIT_DRAIN.leave()

  def load_example(position, counter):
    ex_index, sentence_index = (int(v) for v in items[position])
    ex = examples[ex_index]
    rng = np.random.default_rng([seed, int(counter)]) if train else None
    if sentence_index < 0:
      sentence_index = int(rng.integers(len(ex["sentences"])))
    try:
      image = ex["image"] if "image" in ex else read_image(ex["image_path"])  # preprocess converts
      out = preprocess(image, ex["mask"], ex["sentences"][sentence_index], cfg, train=train,
                       rng=rng)
    except ValueError as e:  # Name the example: tf.data reports only the message.
      raise ValueError(f"Example {ex_index} ({ex.get('image_path', 'image array')}): {e}") from e
    out.update(tokenize(out.pop("text")))
    out.update(example_id=np.int32(ex_index), sentence_index=np.int32(sentence_index),
               no_target=np.bool_(ex.get("no_target", False)),
               category=np.int32((ex.get("category_ids") or [-1])[0]), _mask=np.bool_(True))
    return tuple(np.asarray(out[k], dtype=specs[k][0]) for k in names)

  def tf_load(counter, position):
    values = tf.numpy_function(load, [position, counter],
                               [tf.as_dtype(dtype) for dtype, _ in specs.values()],
                               stateful=False)
    return {k: tf.ensure_shape(v, specs[k][1]) for k, v in zip(names, values)}

  _EXIT_DRAIN.register()
  if train:
    # The counter is this process's sample index; load() maps it to the global stream. Skipped
    # batches (a resumed run) are never loaded.
    ds = tf.data.Dataset.range(skip_batches * local_batch, np.iinfo(np.int64).max)
    ds = ds.map(lambda i: (i, tf.constant(0, tf.int64)))
  else:
    positions = eval_positions(len(items), local_batch, process_index, process_count)
    ds = tf.data.Dataset.from_tensor_slices(positions).enumerate()
  ds = ds.map(tf_load, num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
              deterministic=True)
  ds = ds.batch(local_batch, drop_remainder=True)
  # No tf.data autotuning: its model thread sleeps between rounds, longer as the run goes on, and the
  # iterator's destructor waits for it to wake (gdb: ~LogicalThreadWrapper waiting on OptimizeLoop); a two-
  # process run of tests/test_multihost.py hung 30-60 s after its last line in 6 of 10 tries, in none of 3
  # without it. AUTOTUNE's parallelism then stays at tf.data's starting value, which gives the main job's
  # batches as fast as autotuning did on 2 cores: 145-157 against 135-151 images/s for the pipeline alone
  # (one call per core: 113-130), far above the train step's rate.
  options = tf.data.Options()
  options.autotune.enabled = False
  ds = ds.with_options(options)
  return ds.prefetch(prefetch) if prefetch else ds
