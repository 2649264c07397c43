"""EVF-SAM forward (one image, one phrase: the official ``inference``), JAX vs a PyTorch reference.

  python benchmarks/speed.py --only evf
  EVF_PUBLISHED=1 python benchmarks/speed.py --only evf    # also SAM ViT-H + BEiT-3 large (slow on CPU)

The reference is tests/evf_reference.py: the official ``EvfSamModel.inference`` assembled from
torchscale's BEiT3 and segment_anything's Sam (EVF-SAM is not a package). Both sides hold the
same random weights (the reference's, converted with jaxris.weights.evf_sam) and get the same
preprocessed inputs: a 1024x1024 SAM view, a 224x224 BEiT-3 view and 20 text tokens; both
return mask logits at the original size (SAM's postprocess_masks, 1024 -> crop -> 768x1024).
The default case is BEiT-3 base + SAM ViT-B; the published pair (BEiT-3 large + SAM ViT-H) runs
when EVF_PUBLISHED=1. Calls alternate (one of each per round).

FLOPs are analytic (2 x multiply-adds): the SAM image encoder (benchmarks/speed_sam.py's count)
plus BEiT-3 on 197 + 20 tokens (benchmarks/speed_beit3.py's count); the projector, prompt
encoder and mask decoder (< 1%) are not counted.
"""

from __future__ import annotations

import os
import sys

import numpy as np

from benchmarks import speed_beit3, speed_sam, timing

TEXT_LEN = 20
ORIGINAL = (768, 1024)  # (H, W) of the "photo": resized to 768x1024 inside the padded 1024 frame

# name -> (SAM encoder sizes, BEiT-3 sizes)
CASES = {
    "beit3-base + sam-vit_b": (dict(embed_dim=768, depth=12, num_heads=12, global_attn_indexes=(2, 5, 8, 11)),
                               dict(width=768, layers=12, heads=12, ffn=3072)),
    "beit3-large + sam-vit_h": (dict(embed_dim=1280, depth=32, num_heads=16, global_attn_indexes=(7, 15, 23, 31)),
                                dict(width=1024, layers=24, heads=16, ffn=4096)),
}


def _reference(sam_sizes, beit_sizes):
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
  import torch
  from evf_reference import EvfSamReference, beit3_args, build_sam

  torch.manual_seed(0)
  model = EvfSamReference(build_sam(**sam_sizes), beit3_args(vocab=64010, **beit_sizes)).eval()
  # segment_anything's init leaves rel-pos tables at zero: give them values so nothing is skipped.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "rel_pos" in name:
        p.normal_(0, 0.02)
  return model


def cases(args) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import torch
  from flax import nnx

  from jaxris.models.sam.sam import postprocess_masks
  from jaxris.weights import evf_sam

  names = list(CASES)[:2 if os.environ.get("EVF_PUBLISHED") else 1]
  rows = []
  for name in names:
    sam_sizes, beit_sizes = CASES[name]
    ref = _reference(sam_sizes, beit_sizes)
    model = evf_sam.from_torch(ref.state_dict())
    graphdef, state = nnx.split(model)
    resized = (768, 1024)

    def forward(state, images, images_evf, ids, mask):
      m = nnx.merge(graphdef, state)
      embeddings = m.visual_model.image_encoder(images)
      low_res, _ = m.decode(embeddings, m.prompt_embedding(images_evf, ids, mask))
      return postprocess_masks(low_res, 1024, resized, ORIGINAL)[:, 0]

    g = torch.Generator().manual_seed(0)
    images = torch.zeros(1, 3, 1024, 1024)
    images[:, :, :resized[0], :resized[1]] = torch.randn(1, 3, *resized, generator=g)
    images_evf = torch.randn(1, 3, 224, 224, generator=g)
    ids = torch.randint(4, 64000, (1, TEXT_LEN), generator=g)
    ids[0, 0], ids[0, -1] = 0, 2  # <s> ... </s>
    to_jax = lambda t: jnp.asarray(t.permute(0, 2, 3, 1).numpy())
    inputs = (to_jax(images), to_jax(images_evf), jnp.asarray(ids.numpy(), jnp.int32),
              jnp.ones((1, TEXT_LEN), jnp.int32))
    compiled = jax.jit(forward).lower(state, *inputs).compile()
    run_jax = lambda: jax.block_until_ready(compiled(state, *inputs))

    def run_ref():
      with torch.inference_mode():
        return ref.inference(images, images_evf, ids, [resized], [ORIGINAL])

    ours, theirs = np.asarray(run_jax()), run_ref().numpy()
    err = np.abs(ours - theirs).max() / np.abs(theirs).max()
    jax_t, ref_t = [], []
    for _ in range(args.repeats):
      jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
      ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
    flops = (speed_sam.analytic_flops(1024, c=sam_sizes["embed_dim"], depth=sam_sizes["depth"],
                                      heads=sam_sizes["num_heads"], global_blocks=sam_sizes["global_attn_indexes"])
             + speed_beit3.analytic_flops(batch=1, text_len=TEXT_LEN, dim=beit_sizes["width"],
                                          layers=beit_sizes["layers"], ffn=beit_sizes["ffn"]))
    print(f"# EVF-SAM {name}, 1 image + 1 phrase: analytic {flops / 1e9:.0f} GFLOP; max |JAX - PyTorch| = "
          f"{err:.1e} of the logits' scale; JAX {', '.join(f'{t:.2f}' for t in jax_t)} s; PyTorch "
          f"({torch.get_num_threads()} threads) {', '.join(f'{t:.2f}' for t in ref_t)} s", flush=True)
    rows.append(dict(case=f"EVF-SAM {name} inference", jax_s=float(np.median(jax_t)),
                     ref_s=float(np.median(ref_t)), flops=flops))
    del ref, model, state, compiled
  return rows
