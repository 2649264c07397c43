"""BERT-base forward, batch 64 x 20 tokens (DIT's text length), JAX vs transformers' BertModel.

Same random weights on both sides (the PyTorch model's, converted), inputs of 64 sequences of
20 real tokens. Two cases:

  fp32  float32 everywhere: the arithmetic the parity tests check. On CPU an fp32 XLA dot is a
        full fp32 dot whatever the matmul-precision flag, so this is a like-for-like comparison.
  bf16  bfloat16 matmul inputs with float32 accumulation on both sides: our ``dtype=bfloat16``
        (parameters stay float32) vs PyTorch under ``torch.autocast("cpu", torch.bfloat16)``.

The JAX function returns last_hidden_state and pooler_output, what PyTorch computes. JAX and
PyTorch calls alternate (one of each per repeat) so that load from other jobs on the machine
hits both alike; each reports its median. Each case also prints the max error of the JAX
output against PyTorch's, relative to the output's scale, as a sanity check.

FLOPs are an analytic count, 2 x multiply-adds: per layer the Q/K/V/output projections and the
two feed-forward matmuls on all B*T tokens, the attention matmuls (q k^T and weights v), and the
pooler. Elementwise work (softmax, LayerNorm, GELU, embeddings) is not counted. XLA's own
``cost_analysis()`` count is printed next to it.
"""

from __future__ import annotations

import numpy as np

from benchmarks import timing

BATCH, LENGTH = 64, 20


def analytic_flops(batch: int = BATCH, length: int = LENGTH, hidden: int = 768, layers: int = 12,
                   intermediate: int = 3072) -> int:
  """2 x multiply-adds of one forward (see the module docstring for what is counted)."""
  tokens = batch * length
  per_layer = 2 * tokens * hidden * (4 * hidden + 2 * intermediate)  # q, k, v, output; ffn in + out
  per_layer += 2 * 2 * batch * length * length * hidden              # q k^T and weights v, all heads
  return layers * per_layer + 2 * batch * hidden * hidden             # + pooler


def cases(args) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import torch
  import transformers
  from flax import nnx

  from jaxris.models.bert import BertConfig, BertModel
  from jaxris.weights import bert as bert_weights
  from jaxris.weights import store

  torch.manual_seed(0)
  hf_config = transformers.BertConfig()  # BERT-base: 12 layers, hidden 768, 12 heads, ffn 3072
  official = transformers.BertModel(hf_config).eval()
  config = BertConfig.from_hf_config(hf_config.to_dict())
  params = bert_weights.convert_state_dict({k: v.numpy() for k, v in official.state_dict().items()}, config)

  rng = np.random.default_rng(0)
  ids = rng.integers(1000, hf_config.vocab_size, (BATCH, LENGTH))
  ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
  mask = np.ones_like(ids)
  ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
  ids_j, mask_j = jnp.asarray(ids, jnp.int32), jnp.asarray(mask, jnp.int32)

  rows = []
  for name, dtype in (("fp32", None), ("bf16", jnp.bfloat16)):
    model = nnx.eval_shape(lambda: BertModel(config, rngs=nnx.Rngs(0), dtype=dtype))
    store.assign_params(model, params)
    graphdef, state = nnx.split(model)

    def forward(state, ids, mask):
      out = nnx.merge(graphdef, state)(ids, mask)
      return out.last_hidden_state, out.pooler_output

    compiled = jax.jit(forward).lower(state, ids_j, mask_j).compile()
    xla_flops = (compiled.cost_analysis() or {}).get("flops")
    run_jax = lambda: jax.block_until_ready(compiled(state, ids_j, mask_j))

    def run_ref():
      with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
        return official(input_ids=ids_t, attention_mask=mask_t).last_hidden_state

    ours = np.asarray(run_jax()[0], np.float32)
    ref = run_ref().float().numpy()
    err = np.abs(ours - ref).max() / np.abs(ref).max()

    run_ref()  # warm-up (JAX was warmed up above)
    jax_t, ref_t = [], []
    for _ in range(args.repeats):  # interleaved, one call each per round
      jax_t.append(timing.median_seconds(run_jax, repeats=1, warmup=0))
      ref_t.append(timing.median_seconds(run_ref, repeats=1, warmup=0))
    flops = analytic_flops()
    print(f"# bert-base {name} {BATCH}x{LENGTH}: analytic {flops / 1e9:.0f} GFLOP, XLA cost_analysis "
          f"{xla_flops / 1e9 if xla_flops else float('nan'):.0f} GFLOP; max |JAX - PyTorch| = {err:.1e} of "
          f"the output scale; JAX times {', '.join(f'{t:.2f}' for t in jax_t)} s; PyTorch "
          f"({torch.get_num_threads()} threads) {', '.join(f'{t:.2f}' for t in ref_t)} s", flush=True)
    rows.append(dict(case=f"bert-base forward {BATCH}x{LENGTH} {name}", jax_s=float(np.median(jax_t)),
                     ref_s=float(np.median(ref_t)), flops=flops))
  return rows
