"""Sharding is declared where parameters are made: every full-size model's big kernels get a
tensor-parallel split, and nothing is replicated without being reported.

The models are built abstractly (nnx.eval_shape: shapes and metadata, no weights), so this runs
in seconds on CPU for SAM ViT-H, BEiT-3 large, BERT-base, L-DIT ViT-H and EVF-SAM.
"""

import dataclasses

import numpy as np
import pytest
from flax import nnx
from jax.sharding import AbstractMesh, PartitionSpec as P

from jaxris.build import dit_config, evf_config
from jaxris.configs import evf_sam_vith, ldit_vith
from jaxris.models.beit3 import BEiT3, BEiT3Config
from jaxris.models.bert import BertConfig, BertModel
from jaxris.models.ris.dit_sam import RisSam
from jaxris.models.ris.evf import EvfSam
from jaxris.models.sam.sam import Sam, sam_config
from jaxris.sharding import AXES, DEFAULT_RULES, model_plan, param_spec, plan

MIB = 1 << 20


def _full_size():
  """name -> a function building the full-size model (bert-base is BertConfig's default)."""
  ldit, evf = ldit_vith.get_config(), evf_sam_vith.get_config()
  return {
      "sam_vit_h": lambda: Sam(sam_config("vit_h"), rngs=nnx.Rngs(0)),
      "beit3_large": lambda: BEiT3(BEiT3Config.large(), rngs=nnx.Rngs(0)),
      "bert_base": lambda: BertModel(BertConfig(), rngs=nnx.Rngs(0)),
      "ldit_vit_h": lambda: RisSam(dit_config(ldit.model, BertConfig()), rngs=nnx.Rngs(0)),
      "evf_sam_h_beit3_l": lambda: EvfSam(evf_config(evf.model), rngs=nnx.Rngs(0)),
  }


MODELS = _full_size()


@pytest.fixture(scope="module", params=sorted(MODELS))
def abstract(request):
  return request.param, nnx.eval_shape(MODELS[request.param])


def _shapes(model):
  from jaxris.sharding import path_name
  return {path_name(k): tuple(v.get_value().shape) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


@pytest.mark.parametrize("mesh_shape", [(1, 4, 4), (2, 2, 2)])
def test_every_big_kernel_is_split_over_tensor(abstract, mesh_shape):
  name, model = abstract
  mesh = AbstractMesh(mesh_shape, AXES)
  p = model_plan(model, mesh, DEFAULT_RULES)
  assert not p.unnamed, f"{name}: parameters created without logical axis names: {p.unnamed}"
  shapes = _shapes(model)
  assert len(shapes) > 50, name
  big = {k: s for k, s in shapes.items() if k.endswith("kernel") and len(s) in (2, 4) and 4 * np.prod(s) >= MIB}
  assert big, name
  unsplit = {k: (s, p.specs[k]) for k, s in big.items() if "tensor" not in str(p.specs[k])}
  assert not unsplit, f"{name}: kernels >= 1 MiB without a tensor split: {unsplit}"
  # Nothing silently replicated: a parameter of 1 MiB or more that ends up whole either has only
  # never-split names (None / 'norm' / 'kv') or is listed among the fallbacks.
  reported = {line.split(":")[0] for line in p.fallbacks}
  for k, s in shapes.items():
    if 4 * np.prod(s) >= MIB and all(a is None for a in p.specs[k]):
      assert k in reported, f"{name}: {k} {s} is replicated without a report"


def test_the_vocabulary_that_does_not_divide_is_reported():
  model = nnx.eval_shape(MODELS["bert_base"])
  p = model_plan(model, AbstractMesh((1, 1, 4), AXES), DEFAULT_RULES)
  assert p.specs["embeddings.word_embeddings.embedding"] == P(None, None)  # 30522 % 4 != 0
  assert any(line.startswith("embeddings.word_embeddings.embedding: dim 0 (size 30522, logical 'vocab')")
             for line in p.fallbacks), p.fallbacks
  p = model_plan(model, AbstractMesh((1, 1, 2), AXES), DEFAULT_RULES)
  assert p.specs["embeddings.word_embeddings.embedding"] == P("tensor", None) and not p.fallbacks


def test_param_spec():
  mesh = AbstractMesh((2, 4, 2), AXES)
  assert param_spec(("embed", "mlp"), (1280, 5120), mesh) == (P("fsdp", "tensor"), [])
  assert param_spec(("mlp", "embed"), (5120, 1280), mesh) == (P("tensor", "fsdp"), [])
  assert param_spec((None, "kv"), (127, 80), mesh) == (P(None, None), [])
  spec, notes = param_spec(("embed", "mlp"), (1280, 5121), mesh, what="w")
  assert spec == P("fsdp", None) and notes == ["w: dim 1 (size 5121, logical 'mlp') not split over ('tensor',): "
                                               "5121 is not divisible by 2"]
  spec, notes = param_spec(("embed", "embed"), (64, 64), mesh)  # one mesh axis per spec
  assert spec == P("fsdp", None) and "already used" in notes[0]
  # Axes of size one are not a fallback; a tuple of axes splits over their product.
  assert param_spec(("embed", "mlp"), (6, 5), AbstractMesh((8, 1, 1), AXES)) == (P(None, None), [])
  assert param_spec(("embed",), (16,), mesh, (("embed", ("data", "fsdp")),)) == (P(("data", "fsdp")), [])
  with pytest.raises(ValueError, match="'mlpp' has no sharding rule"):
    param_spec(("embed", "mlpp"), (4, 4), mesh)
  with pytest.raises(ValueError, match="mesh axes are"):
    param_spec(("embed",), (4,), mesh, (("embed", "model"),))


def test_unnamed_parameters_are_reported():
  p = plan({"a": ("embed",), "b": None}, {"a": (8,), "b": (8,)}, AbstractMesh((1, 2, 1), AXES))
  assert p.unnamed == ["b"] and p.specs["b"] == P() and "created without logical axis names: b" in p.report()


def test_recipes_declare_the_default_rules():
  for module in (ldit_vith, evf_sam_vith):
    for arg in (None, "refshapes"):
      assert tuple(map(tuple, module.get_config(arg).sharding_rules)) == DEFAULT_RULES


def test_names_do_not_change_the_model():
  # The metadata is all the annotation adds: the same seed gives the same numbers as an
  # unannotated Linear (checked against a module built without metadata).
  import jax.numpy as jnp
  from jaxris.models.layers import dense
  a = nnx.Linear(8, 16, rngs=nnx.Rngs(3), **dense("embed", "mlp"))
  b = nnx.Linear(8, 16, rngs=nnx.Rngs(3))
  assert jnp.array_equal(a.kernel[...], b.kernel[...]) and a.kernel.get_metadata()["out_sharding"] == ("embed", "mlp")
  assert dataclasses.is_dataclass(BertConfig())
