"""One loader for every text-prompted model that jaxris.train exports (DIT rows, EVF-SAM, the SAM+CLIP
bridge): the CLI, the demo and the overlays all go through it, so they agree on what a run is.

Every predictor it returns answers ``predict_with_target(image, text)`` -> (logits [H, W], > 0 = mask;
no_target: True/False from a bridge's no-target head, None for a model without one).
"""

from __future__ import annotations

from jaxris.inference.bridge_predictor import BridgePredictor
from jaxris.inference.evf_predictor import EvfPredictor
from jaxris.inference.export import weights_family
from jaxris.inference.ris_predictor import RisPredictor
from jaxris.weights import bridge as bridge_weights
from jaxris.weights import evf_sam

# The families recorded in an export's config.json, and the kind of predictor each gets.
KINDS = {evf_sam.FAMILY: "evf", "dit": "dit", bridge_weights.FAMILY: "bridge"}
_PREDICTORS = {"evf": EvfPredictor, "dit": RisPredictor, "bridge": BridgePredictor}


def is_text_model(directory: str) -> bool:
  """Whether DIR holds a text-prompted model (else plain SAM weights, or nothing loadable)."""
  return weights_family(directory) in KINDS


def load_text_predictor(model_dir: str) -> tuple[str, object]:
  """DIR/model of a run (or converted EVF-SAM weights) -> (kind: 'evf' | 'dit' | 'bridge', predictor).
  A directory without a recorded family is taken for a DIT export, as jaxris.train's first exports were."""
  kind = KINDS.get(weights_family(model_dir), "dit")
  return kind, _PREDICTORS[kind](model_dir)
