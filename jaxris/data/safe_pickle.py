"""A restricted unpickler for untrusted annotation pickles (DESIGN.md principle 9).

The official RefCOCO files `refs(unc).p`, `refs(google).p`, `refs(umd).p` are Python 2
cPickle dumps of a list of dicts of strings, numbers and lists. A pickle is a small
program, though: the opcodes GLOBAL / STACK_GLOBAL / INST / OBJ / REDUCE / NEWOBJ can
import any callable and call it, which is how a malicious file runs code on load.

Every such opcode obtains its callable through `Unpickler.find_class` (the extension
registry opcodes EXT1/2/4 too), and `persistent_load` is the only other way to bring in
an outside object. Refusing both, as the Python documentation's "Restricting Globals"
recipe does, leaves an unpickler that can only build the plain containers the opcodes
create directly: dict, list, tuple, set, frozenset, str, bytes, int, float, bool, None.
Nothing in the file is ever called.

Python 2 `str` objects (SHORT_BINSTRING / BINSTRING opcodes) are decoded as UTF-8, a
superset of the ASCII that Python 3's default assumes, so both py2 and py3 dumps load.
"""

import os
import pickle

__all__ = ["UnsafePickleError", "load"]


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle asks for something other than plain containers; nothing was run."""


class _PlainUnpickler(pickle.Unpickler):
  """An Unpickler that refuses every global and persistent id."""

  def __init__(self, file, source):
    super().__init__(file, encoding="utf-8", errors="strict")
    self._source = source

  def find_class(self, module, name):
    raise UnsafePickleError(
        f"{self._source}: refusing to load this pickle: it asks for the Python object "
        f"'{module}.{name}', and loading it could run code. Annotation pickles must hold "
        "only plain containers (lists, dicts, strings, numbers); nothing was executed. "
        "Re-download the official file if this one should be a RefCOCO refs file.")

  def persistent_load(self, pid):
    raise UnsafePickleError(
        f"{self._source}: refusing to load this pickle: it references an external "
        f"object (persistent id {pid!r}). Annotation pickles must hold only plain "
        "containers; nothing was executed.")


def load(path: str | os.PathLike):
  """Unpickles the file at `path`, building only plain containers.

  Raises UnsafePickleError (a pickle.UnpicklingError) if the file asks for any Python
  object, and ValueError if it is not a readable pickle at all (truncated, wrong file).
  """
  path = os.fspath(path)
  with open(path, "rb") as f:
    return _load(f, path)


def _load(file, source):
  try:
    return _PlainUnpickler(file, source).load()
  except UnsafePickleError:
    raise
  except (pickle.UnpicklingError, EOFError, UnicodeDecodeError, ValueError, IndexError,
          KeyError, TypeError, AttributeError) as e:
    raise ValueError(
        f"{source}: not a readable pickle ({type(e).__name__}: {e}). The file may be "
        "truncated or corrupt; re-download it.") from e
