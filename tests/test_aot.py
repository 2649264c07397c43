"""python -m jaxris.aot: the train step compiled for a TPU topology on this CPU machine (libtpu AOT).

Each case runs the command in a subprocess, as a user would (libtpu is initialised once per
process, apart from the 8 simulated CPU devices of this test process).
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CPU-sized L-DIT recipe shrunk further (as tests/test_train.py's CLI run): compiles in seconds.
TINY = ["--config", "configs/ldit_vitb.py:refshapes", "--config.model.sam_overrides.img_size=64",
        "--config.model.sam_overrides.embed_dim=32", "--config.model.sam_overrides.depth=2",
        "--config.model.sam_overrides.num_heads=2", "--config.model.sam_overrides.global_attn_indexes=(1,)",
        "--config.model.sam_overrides.window_size=4", "--config.model.prompt_embed_dim=32",
        "--config.model.decoder_mlp_dim=64", "--config.data.image_size=64", "--config.batch_size=8"]


# The CPU-sized bridge recipe shrunk as tests/test_bridge_train.py's _tiny (an 8x8 SAM grid, a 4x4 CLIP
# grid, 32-64-wide modules; the size fields a command line can set): compiles in well under a minute.
TINY_BRIDGE = ["--config", "configs/bridge_vitb.py:refshapes,no_target=1", "--config.model.sam_overrides.img_size=64",
               "--config.model.sam_overrides.embed_dim=32", "--config.model.sam_overrides.depth=2",
               "--config.model.sam_overrides.num_heads=2", "--config.model.sam_overrides.global_attn_indexes=(1,)",
               "--config.model.sam_overrides.window_size=4", "--config.model.prompt_embed_dim=64",
               "--config.model.decoder_mlp_dim=64", "--config.model.clip_overrides.hidden_size=32",
               "--config.model.clip_overrides.intermediate_size=64", "--config.model.clip_overrides.num_hidden_layers=1",
               "--config.model.clip_overrides.num_attention_heads=2", "--config.model.clip_overrides.image_size=32",
               "--config.model.bridge_sizes.clip_sfp_dim=32", "--config.model.bridge_sizes.pixel_layers=1",
               "--config.model.bridge_sizes.pixel_ffn=64", "--config.model.bridge_sizes.dfam_queries=4",
               "--config.model.bridge_sizes.dfam_ffn=64", "--config.model.bridge_sizes.txt_ffn=64",
               "--config.model.bridge_sizes.clip_text_dim=16", "--config.loss_weights.num_points=64",
               "--config.data.image_size=64", "--config.batch_size=8"]


MSA_OFF = "--xla_msa_enable=false"  # libtpu's flag that turns memory-space assignment off


def _aot(*args, timeout=900, libtpu_flags=""):
  if importlib.util.find_spec("libtpu") is None:
    pytest.fail('libtpu is not installed: the test extra brings it (pip install -e ".[test]", or ".[tpu-aot]")')
  # The command sees one real CPU, and libtpu's defaults unless given flags.
  env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "LIBTPU_INIT_ARGS")}
  if libtpu_flags:
    env["LIBTPU_INIT_ARGS"] = libtpu_flags
  return subprocess.run([sys.executable, "-m", "jaxris.aot", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def _compiled_for_a_v5e_2x2(recipe, tmp_path, libtpu_flags=""):
  """The recipe (global batch 8) compiled for v5e:2x2 on mesh (2,1,2) by the command: its report, checked."""
  out = tmp_path / "r.json"
  r = _aot(*recipe, "--topology", "v5e:2x2", "--mesh", "(2,1,2)", "--json", str(out), libtpu_flags=libtpu_flags)
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["topology"] == "v5e:2x2" and report["chips"] == 4 and report["mesh"] == [2, 1, 2]
  assert report["global_batch"] == 8 and report["hbm_bytes"] == 16 << 30
  assert 0 < report["per_chip_bytes"] < 1 << 30 and report["fits"] is True
  assert report["model_flops_per_step"] > 0 and report["xla_flops_per_step"] > 0
  assert report["estimated_step_s"] > 0 and 0 < report["estimated_mfu"] <= 1
  assert report["images_per_s"] == pytest.approx(8 / report["estimated_step_s"])
  # SAM's ViT attention (an 8x8 grid, 64 tokens) takes jaxris' grid kernel, which jaxris.aot knows:
  # its FLOPs are added to XLA's estimate (a few us here: the kernels' bytes take longer).
  kernels = report["uncosted_kernels"]
  assert kernels["count"] > 0 and kernels["flops"] > 0 and kernels["unknown"] == []
  assert kernels["seconds_added"] >= 0
  # libtpu's flags change the compile, so the report says which were in force; memory-space
  # assignment (libtpu's default) prefetches some buffers with asynchronous copies, and off it makes none.
  assert report["libtpu_flags"] == libtpu_flags
  if libtpu_flags == MSA_OFF:
    assert report["async_copies"] == {"count": 0, "bytes": 0}
  else:
    assert report["async_copies"]["count"] > 0 and report["async_copies"]["bytes"] > 0
  for line in ("v5e:2x2 (4 chips)", "(2, 1, 2)", "per-chip memory", "of 16.00 GiB HBM: fits", "est. MFU",
               "libtpu flags  ", libtpu_flags or "none (libtpu's defaults)", "MSA async copies  ",
               f"Pallas kernels XLA cannot cost  {kernels['count']}: ", "not measured runs"):
    assert line in r.stdout, (line, r.stdout)
  return report


def test_tiny_recipe_compiles_for_a_v5e_2x2(tmp_path):
  # With memory-space assignment off (the pod table's MSA-off rows): the flag reaches libtpu. The
  # bridge recipe below compiles with libtpu's defaults.
  report = _compiled_for_a_v5e_2x2(TINY, tmp_path, libtpu_flags=MSA_OFF)
  # The analytic count (encoders only) and XLA's count of the whole step agree to within 2x.
  assert 0.5 < report["xla_flops_per_step"] / report["model_flops_per_step"] < 2


def test_tiny_bridge_recipe_compiles_for_a_v5e_2x2(tmp_path):
  report = _compiled_for_a_v5e_2x2(TINY_BRIDGE, tmp_path)
  # The analytic count is the three encoders only (the decoders, much of this tiny model, are left out).
  assert report["model_flops_per_step"] < report["xla_flops_per_step"]


@pytest.mark.parametrize("args, message", [
    (["--topology", "v9:2x2"], "unknown topology 'v9:2x2'"),
    (["--topology", "v5e:2x2", "--mesh", "(3,1,1)"], "mesh (3, 1, 1) has 3 devices, the topology has 4 chips"),
    (["--topology", "v5e:2x2", "--mesh", "(3,-1,1)"], "mesh (3, -1, 1) does not divide the 4 chips"),
    (["--topology", "v5e:2x2", "--mesh", "banana"], "bad mesh 'banana'"),
    (["--topology", "v5e:2x2", "--mesh", "(4,1,1)", "--config.batch_size=6"], "is not a multiple of the data x fsdp"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
  r = _aot(*TINY, *args, timeout=300)
  assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
  lines = [line for line in r.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith("jaxris.aot: error: ") and message in lines[0], r.stderr


def test_a_v4_topology_is_one_device_per_chip():
  """libtpu describes v4 by TensorCore (two per chip) unless asked for megacore, as JAX runs v4."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  r = subprocess.run([sys.executable, "-c", "from jaxris.aot import tpu_devices; "
                      "print([len(tpu_devices(t)) for t in ('v4:2x2x1', 'v5p:2x2x1', 'v5e:2x2')])"],
                     cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "[4, 4, 4]", (r.stdout, r.stderr[-2000:])


def test_the_estimate_adds_what_uncosted_pallas_kernels_do_beyond_their_bytes():
  # Splash attention's kernels (and flash attention's backward ones) carry no cost estimate
  # (tests/test_attention.py finds them in a real TPU compile): XLA's cost model charges them their
  # bytes, its FLOP count leaves them out.
  from jaxris.aot import estimate_step
  from jaxris.pallas_costs import Kernel
  peak, bandwidth = 100e12, 1e12
  compute_bound = Kernel("flash_mha_bwd_dkv_block_q_major_128", flops=3e11, bytes=int(1e9))  # 3 ms vs 1 ms
  memory_bound = Kernel("flash_mha_bwd_dq_block_q_major_128", flops=1e10, bytes=int(2e9))    # 0.1 ms vs 2 ms
  unknown = Kernel("some_other_kernel", flops=None, bytes=int(1e9))
  model = {"optimal_seconds": 0.010, "flops": 5e11, "bytes accessed": 4e9}
  step, source, added = estimate_step(model, [compute_bound, memory_bound, unknown], peak, bandwidth)
  assert added == pytest.approx(0.002) and step == pytest.approx(0.012)
  assert source == "xla optimal_seconds + Pallas kernel FLOPs"
  # Without a valid cost-model time: the roofline of XLA's FLOPs plus the kernels' against its bytes.
  roofline = {"optimal_seconds": -1.0, "flops": 5e11, "bytes accessed": 4e9}
  step, source, added = estimate_step(roofline, [compute_bound, memory_bound], peak, bandwidth)
  assert step == pytest.approx((5e11 + 3.1e11) / peak) and added == pytest.approx(3.1e11 / peak)
  assert source == "roofline of xla flops/bytes + Pallas kernel FLOPs"
  memory_roofline = {"optimal_seconds": -1.0, "flops": 5e11, "bytes accessed": 9e9}
  assert estimate_step(memory_roofline, [compute_bound], peak, bandwidth)[2] == 0.0
  assert estimate_step(model, [], peak, bandwidth) == (0.010, "xla optimal_seconds", 0.0)
  assert estimate_step({}, [compute_bound], peak, bandwidth) == (None, "none", 0.0)
