"""The SAM+CLIP bridge's weights: trained exports (family "bridge") and the CLIP-text constants.

The bridge needs the CLIP text tower only for two constant tables (spec §4.6), computed here once
from a converted CLIP (python -m jaxris.convert.clip ...) and stored beside the weights:

  class_text  T [K, D]: the projected, L2-normalised end-of-text embeddings of the category names,
              no prompt template, "background" last. A name with synonyms is the L2-normalised
              mean of its synonyms' *unnormalised* projected embeddings.
  sot_vec     [D]: final_layer_norm of the start-of-text position (before the projection): the same
              for every caption, since the text transformer is causal.
  category_rows  a dataset's category id -> its row of T (ids without a row -> "background").

  python -m jaxris.weights.bridge --clip weights/clip-vit-large-patch14-336 --out weights/bridge_constants

The category list is COCO panoptic's 133 (detectron2's COCO_CATEGORIES order) + "background". For the
"-merged" / "-other" / "-stuff" names the official code averages hand-written synonym lists; that table
is in a repository without a licence, so by default a name is encoded as its words ("sky-other-merged"
-> "sky", "wall-brick" as it is), except tree-merged whose synonyms the spec quotes; --synonyms FILE
(JSON {name: [synonym, ...]}) supplies the full lists.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from flax import nnx

from jaxris.models.ris.bridge.model import BridgeConfig, BridgeSam
from jaxris.weights import store

FAMILY = "bridge"
CONSTANTS_FILE = "constants.safetensors"
CONSTANT_NAMES = ("class_text", "sot_vec", "category_rows")

# COCO panoptic categories (id, name), detectron2's order: 80 things, then 53 stuff classes.
COCO_PANOPTIC = (
    (1, "person"), (2, "bicycle"), (3, "car"), (4, "motorcycle"), (5, "airplane"), (6, "bus"), (7, "train"),
    (8, "truck"), (9, "boat"), (10, "traffic light"), (11, "fire hydrant"), (13, "stop sign"), (14, "parking meter"),
    (15, "bench"), (16, "bird"), (17, "cat"), (18, "dog"), (19, "horse"), (20, "sheep"), (21, "cow"),
    (22, "elephant"), (23, "bear"), (24, "zebra"), (25, "giraffe"), (27, "backpack"), (28, "umbrella"),
    (31, "handbag"), (32, "tie"), (33, "suitcase"), (34, "frisbee"), (35, "skis"), (36, "snowboard"),
    (37, "sports ball"), (38, "kite"), (39, "baseball bat"), (40, "baseball glove"), (41, "skateboard"),
    (42, "surfboard"), (43, "tennis racket"), (44, "bottle"), (46, "wine glass"), (47, "cup"), (48, "fork"),
    (49, "knife"), (50, "spoon"), (51, "bowl"), (52, "banana"), (53, "apple"), (54, "sandwich"), (55, "orange"),
    (56, "broccoli"), (57, "carrot"), (58, "hot dog"), (59, "pizza"), (60, "donut"), (61, "cake"), (62, "chair"),
    (63, "couch"), (64, "potted plant"), (65, "bed"), (67, "dining table"), (70, "toilet"), (72, "tv"),
    (73, "laptop"), (74, "mouse"), (75, "remote"), (76, "keyboard"), (77, "cell phone"), (78, "microwave"),
    (79, "oven"), (80, "toaster"), (81, "sink"), (82, "refrigerator"), (84, "book"), (85, "clock"), (86, "vase"),
    (87, "scissors"), (88, "teddy bear"), (89, "hair drier"), (90, "toothbrush"),
    (92, "banner"), (93, "blanket"), (95, "bridge"), (100, "cardboard"), (107, "counter"), (109, "curtain"),
    (112, "door-stuff"), (118, "floor-wood"), (119, "flower"), (122, "fruit"), (125, "gravel"), (128, "house"),
    (130, "light"), (133, "mirror-stuff"), (138, "net"), (141, "pillow"), (144, "platform"), (145, "playingfield"),
    (147, "railroad"), (148, "river"), (149, "road"), (151, "roof"), (154, "sand"), (155, "sea"), (156, "shelf"),
    (159, "snow"), (161, "stairs"), (166, "tent"), (168, "towel"), (171, "wall-brick"), (175, "wall-stone"),
    (176, "wall-tile"), (177, "wall-wood"), (178, "water-other"), (180, "window-blind"), (181, "window-other"),
    (184, "tree-merged"), (185, "fence-merged"), (186, "ceiling-merged"), (187, "sky-other-merged"),
    (188, "cabinet-merged"), (189, "table-merged"), (190, "floor-other-merged"), (191, "pavement-merged"),
    (192, "mountain-merged"), (193, "grass-merged"), (194, "dirt-merged"), (195, "paper-merged"),
    (196, "food-other-merged"), (197, "building-other-merged"), (198, "rock-merged"), (199, "wall-other-merged"),
    (200, "rug-merged"),
)
BACKGROUND = "background"
SPEC_SYNONYMS = {"tree-merged": ["branch", "tree", "bush", "leaves"]}  # the one list the spec quotes


def synonyms_of(name: str, table: dict | None = None) -> list[str]:
  """The texts whose embeddings are averaged for one category name (see the module docstring)."""
  table = {**SPEC_SYNONYMS, **(table or {})}
  if name in table:
    return list(table[name])
  if name.endswith(("-merged", "-other", "-stuff")) or "-other-" in name:
    words = [w for w in name.split("-") if w not in ("merged", "other", "stuff")]
    return [" ".join(words)]
  return [name]


def text_constants(clip_model, tokenizer, names, synonyms: dict | None = None) -> dict[str, np.ndarray]:
  """(class_text [len(names), D], sot_vec [D]) from a jaxris CLIPModel and its tokenizer (one batch)."""
  texts = [synonyms_of(name, synonyms) for name in names]
  tok = tokenizer([t for group in texts for t in group])
  emb = np.asarray(clip_model.get_text_features(tok["input_ids"], tok["attention_mask"]), np.float64)
  rows, start = [], 0
  for group in texts:
    mean = emb[start:start + len(group)].mean(0)  # the unnormalised embeddings, averaged
    rows.append(mean / np.linalg.norm(mean))
    start += len(group)
  sot = np.asarray(clip_model.text_model(tok["input_ids"][:1], tok["attention_mask"][:1]).last_hidden_state[0, 0])
  return {"class_text": np.asarray(rows, np.float32), "sot_vec": sot.astype(np.float32)}


def coco_constants(clip_model, tokenizer, synonyms: dict | None = None) -> dict[str, np.ndarray]:
  """The official tables: 133 COCO panoptic names + "background"; category_rows maps COCO ids (< 201)."""
  names = [n for _, n in COCO_PANOPTIC] + [BACKGROUND]
  out = text_constants(clip_model, tokenizer, names, synonyms)
  rows = np.full((201,), len(names) - 1, np.int32)
  for row, (cid, _) in enumerate(COCO_PANOPTIC):
    rows[cid] = row
  out["category_rows"] = rows
  return out


def save_constants(directory: str, constants: dict) -> str:
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, CONSTANTS_FILE)
  store.write_safetensors(path, {k: np.asarray(constants[k]) for k in CONSTANT_NAMES})
  return path


def load_constants(directory: str) -> dict[str, np.ndarray]:
  from safetensors.numpy import load_file
  path = os.path.join(directory, CONSTANTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: python -m jaxris.weights.bridge --clip <converted CLIP-L/14-336> "
                            f"--out {directory}")
  return dict(load_file(path))


# --- Trained exports.

def build(cfg: BridgeConfig, params, dtype=None) -> BridgeSam:
  model = nnx.eval_shape(lambda: BridgeSam(cfg, rngs=nnx.Rngs(0), dtype=dtype))
  store.assign_params(model, dict(params))
  return model


def save(directory: str, cfg: BridgeConfig, params, progress: bool = False) -> None:
  store.save(directory, FAMILY, cfg.to_dict(), params, progress)


def load(directory: str, dtype=None) -> BridgeSam:
  """A bridge exported by jaxris.train (parameters and constants) -> BridgeSam."""
  cfg, params = store.load(directory, FAMILY)
  return build(BridgeConfig.from_dict(cfg), params, dtype)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxris.weights.bridge", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--clip", required=True, help="a converted CLIP (python -m jaxris.convert.clip), HF dir or OpenAI .pt")
  p.add_argument("--out", required=True, help="directory for constants.safetensors")
  p.add_argument("--synonyms", help="JSON {category name: [synonym, ...]} for the merged COCO classes")
  args = p.parse_args(argv)
  from jaxris.weights import clip as clip_weights
  try:
    model, tokenizer = clip_weights.load(args.clip)
  except (FileNotFoundError, ValueError) as e:
    print(f"jaxris.weights.bridge: error: {e}", file=sys.stderr)
    return 2
  synonyms = None
  if args.synonyms:
    with open(args.synonyms) as f:
      synonyms = json.load(f)
  path = save_constants(args.out, coco_constants(model, tokenizer, synonyms))
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
