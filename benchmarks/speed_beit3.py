"""BEiT-3 base forward on a 224px image + 20 text tokens, batch 8, JAX vs torchscale's BEiT3.

This is EVF-SAM's BEiT-3 call (joint image and text, early fusion) at the base size. Both
sides hold the same random weights (torchscale's init, converted) and get the same inputs:
8 images of 224x224 and 8 texts of 20 real tokens, so 197 + 20 = 217 tokens per sample.

  fp32  float32 everywhere: the arithmetic the parity tests check (an fp32 XLA dot on CPU is a
        full fp32 dot whatever the matmul-precision flag).
  bf16  bfloat16 compute: our ``dtype=bfloat16`` (float32 parameters, float32 softmax and
        LayerNorm statistics) vs torchscale under ``torch.autocast("cpu", torch.bfloat16)``.

JAX and PyTorch calls alternate, one of each per round, so that load from other jobs hits
both alike; each side reports the median of its rounds. Every case prints the JAX output's
max error against PyTorch's, relative to the output's scale, as a sanity check.

FLOPs are an analytic count, 2 x multiply-adds: the patch projection, and per layer the
q/k/v/out projections and both FFN matmuls on every token plus the two attention matmuls
(q k^T, weights v). The multiway split does not change the count (each token goes through one
expert). Elementwise work (softmax, LayerNorms, GELU) is not counted.
"""

from __future__ import annotations

import warnings

import numpy as np

from benchmarks import timing

BATCH, TEXT_LEN, IMG = 8, 20, 224


def analytic_flops(batch: int = BATCH, text_len: int = TEXT_LEN, img: int = IMG, patch: int = 16,
                   dim: int = 768, layers: int = 12, ffn: int = 3072) -> int:
  """2 x multiply-adds of one forward (see the module docstring for what is counted)."""
  patches = (img // patch) ** 2
  n = patches + 1 + text_len
  per_layer = 2 * n * dim * (4 * dim + 2 * ffn) + 2 * 2 * n * n * dim
  return batch * (2 * patches * (3 * patch * patch) * dim + layers * per_layer)


def cases(args) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  with warnings.catch_warnings():  # torchscale/timm import-time deprecation noise
    warnings.simplefilter("ignore")
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3 as TorchBEiT3

  from jaxris.models.beit3 import BEiT3Config
  from jaxris.weights import beit3 as beit3_weights

  cfg = BEiT3Config.base()
  torch.manual_seed(0)
  official = TorchBEiT3(EncoderConfig(  # unilm beit3/modeling_utils.py _get_base_config()
      img_size=224, patch_size=16, vocab_size=64010, multiway=True, layernorm_embedding=False,
      normalize_output=True, no_output_layer=True, drop_path_rate=0.0, encoder_embed_dim=768,
      encoder_attention_heads=12, encoder_ffn_embed_dim=3072, encoder_layers=12)).eval()
  _, params = beit3_weights.convert_state_dict({k: v.numpy() for k, v in official.state_dict().items()},
                                               prefix="", ignore=(), cfg=cfg)

  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (BATCH, IMG, IMG, 3)).astype(np.float32)  # mean = std = 0.5 normalised
  ids = rng.integers(4, 64000, (BATCH, TEXT_LEN))
  ids[:, 0], ids[:, -1] = 0, 2  # <s> ... </s>
  images_t, ids_t = torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(ids)
  no_padding_t = torch.zeros(BATCH, TEXT_LEN, dtype=torch.bool)
  images_j, ids_j = jnp.asarray(images), jnp.asarray(ids, jnp.int32)
  mask_j = jnp.ones((BATCH, TEXT_LEN), jnp.int32)

  rows = []
  for name, dtype in (("fp32", None), ("bf16", jnp.bfloat16)):
    graphdef, state = nnx.split(beit3_weights.build(cfg, params, dtype))

    def forward(state, ids, images, mask):
      return nnx.merge(graphdef, state)(ids, images, mask).encoder_out

    compiled = jax.jit(forward).lower(state, ids_j, images_j, mask_j).compile()
    run_jax = lambda: jax.block_until_ready(compiled(state, ids_j, images_j, mask_j))

    def run_ref():
      with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        return official(textual_tokens=ids_t, visual_tokens=images_t,
                        text_padding_position=no_padding_t)["encoder_out"]

    ours = np.asarray(run_jax(), np.float32)
    ref = run_ref().float().numpy()
    err = np.abs(ours - ref).max() / np.abs(ref).max()

    jax_t, ref_t = [], []
    for _ in range(args.repeats):  # interleaved, one call each per round (both warmed up above)
      jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
      ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
    flops = analytic_flops()
    print(f"# beit3-base {name} {BATCH}x(197+{TEXT_LEN}): analytic {flops / 1e9:.0f} GFLOP; max |JAX - PyTorch| = "
          f"{err:.1e} of the output scale; JAX times {', '.join(f'{t:.2f}' for t in jax_t)} s; PyTorch "
          f"({torch.get_num_threads()} threads) {', '.join(f'{t:.2f}' for t in ref_t)} s", flush=True)
    rows.append(dict(case=f"beit3-base forward {BATCH}x(224px+{TEXT_LEN}) {name}", jax_s=float(np.median(jax_t)),
                     ref_s=float(np.median(ref_t)), flops=flops))
  return rows
