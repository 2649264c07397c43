"""The recipes: one file per paper row (``configs/`` at the top of the repository is this folder).

``--config configs/ldit_vitb.py[:args]`` names a recipe file. When that path does not exist, e.g.
after ``pip install jaxris`` outside the repository, the recipe of the same name shipped in this
package is used, so the README's commands work from any directory.
"""

from __future__ import annotations

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def resolve_config_path(argv: list[str]) -> list[str]:
  """argv with ``--config configs/NAME.py[:args]`` pointed at the packaged recipe when the path is missing."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg == "--config" and i + 1 < len(out):
      out[i + 1] = _packaged(out[i + 1])
    elif arg.startswith("--config="):
      out[i] = "--config=" + _packaged(arg[len("--config="):])
  return out


def _packaged(spec: str) -> str:
  path, colon, arg = spec.partition(":")
  if os.path.exists(path) or not path.endswith(".py"):
    return spec
  shipped = os.path.join(PACKAGE_DIR, os.path.basename(path))
  return shipped + colon + arg if os.path.isfile(shipped) else spec
