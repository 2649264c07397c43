"""Peak memory of converting a full-size EVF-SAM checkpoint (SAM ViT-H + BEiT-3 large, the release layout).

  python benchmarks/convert_memory.py                                   # fp32 pytorch_model.bin, 5.3 GB
  python benchmarks/convert_memory.py --dtype float16 --format safetensors
  python benchmarks/convert_memory.py --converter /tmp/old/convert/evf_sam.py   # another checkout's CLI

Writes, in a temporary directory, a checkpoint directory laid out like YxZhang/evf-sam: config.json and
the 1569 tensors of EvfSamModel with their exact names and shapes (tests/evf_reference.py's model built
on torch's meta device, as tests/test_evf_convert.py does), random values. Then runs the converter CLI
(``python convert/evf_sam.py --src SRC --out OUT``) in a subprocess and reads that process's peak
resident memory (``wait4``'s ru_maxrss; pages of a memory-mapped checkpoint count once touched).
Prints one table row; the temporary directory (checkpoint and output, twice the size) is deleted.
The checkpoint is built in this process first, so this process needs about its size in memory too.
The tokenizer files are left out: the converter warns and converts the weights alone.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GB = 1e9


def release_shapes() -> dict[str, tuple[int, ...]]:
  """name -> shape of the released EvfSamModel (SAM-H + BEiT-3 large); no memory spent."""
  import torch

  sys.path.insert(0, os.path.join(REPO, "tests"))
  import evf_reference as ref_lib

  with torch.device("meta"):
    ref = ref_lib.EvfSamReference(ref_lib.build_sam(1280, 32, 16, (7, 15, 23, 31)),
                                  ref_lib.beit3_args(1024, 24, 16, 4096, 64010))
  return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def write_checkpoint(directory: str, fmt: str, dtype: str) -> str:
  """config.json + random weights in `directory`; -> the weights file."""
  import numpy as np
  import torch

  shapes = release_shapes()
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump({"architectures": ["EvfSamModel"], "hidden_size": 1024, "mm_extractor_scale": "large",
               "sam_scale": "huge", "out_dim": 256, "model_type": "evf", "torch_dtype": dtype}, f)
  if fmt == "safetensors":  # streamed: one random tensor at a time
    from jaxris.weights import reader, store

    rng = np.random.default_rng(0)
    specs = {k: (s, np.dtype(dtype)) for k, s in shapes.items()}
    random = reader.StateDict(specs, lambda k: (rng.standard_normal(shapes[k], np.float32) * 0.02).astype(dtype),
                              "random")
    path = os.path.join(directory, "model.safetensors")
    store.write_safetensors(path, random)
    return path
  g = torch.Generator().manual_seed(0)
  state_dict = {k: torch.empty(s).normal_(0, 0.02, generator=g).to(getattr(torch, dtype)) for k, s in shapes.items()}
  path = os.path.join(directory, "pytorch_model.bin")
  torch.save(state_dict, path)  # what the release holds: torch.save of the state_dict
  return path


def peak_rss(command: list[str]) -> tuple[float, float, int]:
  """Runs `command`; -> (its peak resident memory in bytes, wall seconds, exit status)."""
  start = time.perf_counter()
  process = subprocess.Popen(command)
  _, status, usage = os.wait4(process.pid, 0)
  process.returncode = os.waitstatus_to_exitcode(status)
  return usage.ru_maxrss * 1024.0, time.perf_counter() - start, process.returncode  # ru_maxrss: KiB on Linux


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--format", choices=("bin", "safetensors"), default="bin", help="checkpoint file format")
  parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="checkpoint dtype")
  parser.add_argument("--converter", default=os.path.join(REPO, "convert", "evf_sam.py"),
                      help="the converter CLI to measure (default: this checkout's)")
  parser.add_argument("--tmp", default=None, help="where to make the temporary directory (default: $TMPDIR)")
  args = parser.parse_args(argv)

  root = tempfile.mkdtemp(prefix="convert_memory_", dir=args.tmp)
  try:
    src, out = os.path.join(root, "evf-sam"), os.path.join(root, "converted")
    os.makedirs(src)
    print(f"writing a full-size {args.dtype} {args.format} checkpoint in {src} ...", flush=True)
    size = os.path.getsize(write_checkpoint(src, args.format, args.dtype))
    rss, wall, code = peak_rss([sys.executable, args.converter, "--src", src, "--out", out])
    if code != 0:
      print(f"error: the converter exited with status {code}", file=sys.stderr)
      return 1
    print()
    print(f"| checkpoint | size GB | peak RSS GB | RSS / size | wall s | converter |")
    print(f"|---|---|---|---|---|---|")
    print(f"| {args.dtype} {args.format} | {size / GB:.2f} | {rss / GB:.2f} | {rss / size:.2f} | {wall:.0f} | "
          f"{os.path.relpath(args.converter, REPO) if args.converter.startswith(REPO) else args.converter} |")
  finally:
    shutil.rmtree(root, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
