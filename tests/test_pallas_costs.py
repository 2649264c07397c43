"""jaxris.pallas_costs: the FLOPs of Pallas attention kernels that XLA cannot cost, read from HLO text
(the real TPU compile that produces such text: tests/test_attention.py)."""

import pytest

from jaxris.pallas_costs import attention_kernel_flops, uncosted_kernels

# SAM ViT-H's global block on one v5p chip, as splash attention's kernels appear in the compiled module:
# 16 images x 16 heads x 1152 tokens, q and k 80 + 64 relative-position features wide, v 80 wide. The
# block-mask tables (s8, s32) come ahead of q, k, v; the fused backward writes dq per key block.
_HLO = """
  %mask = s8[1,1,1]{2,1,0} parameter(0)
  %q = bf16[16,16,1152,144]{3,2,1,0:T(8,128)(2,1)} parameter(1)
  %k = bf16[16,16,1152,144]{3,2,1,0:T(8,128)(2,1)} parameter(2)
  %v = bf16[16,16,1152,80]{3,2,1,0:T(8,128)(2,1)} parameter(3)
  %seg = s32[16,1152,128]{2,1,0} parameter(4)
  %lse = f32[16,16,8,1152]{3,2,1,0} parameter(5)
  %do = bf16[16,16,1152,80]{3,2,1,0} parameter(6)
  %splash_mha_fwd_segmented_residuals.1 = (f32[16,384,128]{2,1,0}, bf16[16,16,1152,80]{3,2,1,0}) custom-call(%mask, %q, %k, %v, %seg), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "..."}}
  %splash_mha_dkv_segmented_no_residuals.1 = (bf16[16,1,16,1152,144]{4,3,2,1,0}, bf16[16,16,1152,144]{3,2,1,0}, bf16[16,16,1152,80]{3,2,1,0}) custom-call(%mask, %q, %k, %v, %seg, %lse, %do), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "..."}}
  %costed = bf16[16,16,1152,80]{3,2,1,0} custom-call(%q, %k, %v), custom_call_target="tpu_custom_call", backend_config={"custom_call_config": {"body": "...", "cost_estimate": {"flops": 1}}}
  %mystery_kernel = f32[8]{0} custom-call(%q, %k, %v), custom_call_target="tpu_custom_call", backend_config={}
"""


def test_splash_kernels_are_found_with_their_flops_and_bytes():
  kernels = {k.name: k for k in uncosted_kernels(_HLO)}
  assert sorted(kernels) == ["mystery_kernel", "splash_mha_dkv_segmented_no_residuals.1",
                             "splash_mha_fwd_segmented_residuals.1"]  # the costed one is left to XLA
  pairs = 2 * 16 * 16 * 1152 * 1152
  # The MXU runs 144 features as two 128-lane passes and 80 as one: q.k at 256, p.v at 128.
  assert kernels["splash_mha_fwd_segmented_residuals.1"].flops == pairs * (256 + 128)
  # Fused backward (dq among its results): q.k, ds.q, ds.k at 256; do.v, p.do at 128.
  assert kernels["splash_mha_dkv_segmented_no_residuals.1"].flops == pairs * (3 * 256 + 2 * 128)
  assert kernels["mystery_kernel"].flops is None  # not an attention kernel jaxris knows
  qkv = 16 * 16 * 1152 * (144 + 144 + 80) * 2
  out = 16 * 384 * 128 * 4 + 16 * 16 * 1152 * 80 * 2
  assert kernels["splash_mha_fwd_segmented_residuals.1"].bytes == qkv + out + 1 + 16 * 1152 * 128 * 4


@pytest.mark.parametrize("name,fused,factor", [
    ("flash_mha_bwd_dkv_block_q_major_128", False, 2 * 128 + 2 * 128),
    ("flash_mha_bwd_dq_block_q_major_128", False, 2 * 128 + 128),
    ("splash_mha_dkv_no_residuals", False, 2 * 128 + 2 * 128),
    ("splash_mha_dkv_no_residuals", True, 3 * 128 + 2 * 128),
    ("splash_mha_dq_no_residuals", False, 2 * 128 + 128),
    ("splash_mha_fwd_no_residuals", False, 128 + 128),
    ("grid_attention_fwd.3", False, 128 + 128),         # jaxris.ops.grid_attention
    ("grid_attention_bwd.3", False, 3 * 128 + 2 * 128),
])
def test_attention_kernel_flops_per_kernel(name, fused, factor):
  # ViT-B at 512 px on the flash path: q, k, v padded to 128 features; 2 rows x 12 heads x 1152 tokens.
  q = k = v = (2, 12, 1152, 128)
  assert attention_kernel_flops(name, q, k, v, fused=fused) == 2 * 2 * 12 * 1152 * 1152 * factor
  assert attention_kernel_flops("matmul_kernel", q, k, v) is None
