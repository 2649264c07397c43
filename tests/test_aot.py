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


def _aot(*args, timeout=900):
  if importlib.util.find_spec("libtpu") is None:
    pytest.fail('libtpu is not installed: the test extra brings it (pip install -e ".[test]", or ".[tpu-aot]")')
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # the command sees one real CPU
  return subprocess.run([sys.executable, "-m", "jaxris.aot", *args], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=timeout)


def test_tiny_recipe_compiles_for_a_v5e_2x2(tmp_path):
  out = tmp_path / "r.json"
  r = _aot(*TINY, "--topology", "v5e:2x2", "--mesh", "(2,1,2)", "--json", str(out))
  assert r.returncode == 0, r.stderr[-3000:]
  report = json.loads(out.read_text())
  assert report["topology"] == "v5e:2x2" and report["chips"] == 4 and report["mesh"] == [2, 1, 2]
  assert report["global_batch"] == 8 and report["hbm_bytes"] == 16 << 30
  assert 0 < report["per_chip_bytes"] < 1 << 30 and report["fits"] is True
  # The analytic count (encoders only) and XLA's count of the whole step agree to within 2x.
  assert 0.5 < report["xla_flops_per_step"] / report["model_flops_per_step"] < 2
  assert report["estimated_step_s"] > 0 and 0 < report["estimated_mfu"] <= 1
  assert report["images_per_s"] == pytest.approx(8 / report["estimated_step_s"])
  for line in ("v5e:2x2 (4 chips)", "(2, 1, 2)", "per-chip memory", "of 16.00 GiB HBM: fits", "est. MFU",
               "not measured runs"):
    assert line in r.stdout, (line, r.stdout)


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
