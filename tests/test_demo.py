"""python -m jaxris.demo: the app logic without a browser, the command line, and the real app driven by
Playwright in Debian's Chromium with the real MobileSAM weights (no skips: a missing browser or missing
weights fail the test, since CI installs both: see .ci/run)."""

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

from jaxris import demo
from jaxris.demo import CAPABILITIES, Prompts, Segmenter, add_click, describe, request_error
from jaxris.inference.sam_predictor import SamPredictor
from jaxris.models.functional import assign_params, param_shapes
from jaxris.models.sam.sam import sam_config
from jaxris.weights import sam as sam_weights

CHROMIUM = "/usr/bin/chromium"  # Debian's package (apt-get install chromium); Playwright's own download is not used
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


# --- App logic: prompts, what each model takes, messages.

def test_clicks_make_points_and_a_box():
  p = add_click(Prompts(), "positive point", 10, 20)
  p = add_click(p, "negative point", 5, 6)
  assert p.points == ((10.0, 20.0, 1), (5.0, 6.0, 0)) and p.box is None
  p = add_click(p, "box corner", 50, 8)
  assert p.corner == (50.0, 8.0) and p.box is None
  assert add_click(p, "box corner", 50, 30) == p, "a zero-width box waits for a proper corner"
  p = add_click(p, "box corner", 12, 40)
  assert p.box == (12.0, 8.0, 50.0, 40.0) and p.corner is None and p.points
  with pytest.raises(ValueError, match="unknown click mode"):
    add_click(p, "lasso", 1, 1)


@pytest.mark.parametrize("kind,prompts,text,message", [
    ("sam", Prompts(), "", "Click a point"),
    ("sam", Prompts(points=((1, 2, 1),)), "the dog", "does not take text"),
    ("sam", Prompts(points=((1, 2, 1),)), "", None),
    ("sam", Prompts(box=(1, 2, 3, 4)), "  ", None),
    ("evf", Prompts(), "", "Type a phrase"),
    ("evf", Prompts(points=((1, 2, 1),)), " ", "Type a phrase"),
    ("evf", Prompts(points=((1, 2, 0),), box=(1, 2, 3, 4)), "the dog", None),
    ("dit", Prompts(), "the dog", None),
    ("dit", Prompts(points=((1, 2, 1),)), "the dog", "does not take points"),
    ("dit", Prompts(box=(1, 2, 3, 4)), "the dog", "does not take a box"),
    ("dit", Prompts(), "", "Type a phrase"),
])
def test_what_each_model_takes(kind, prompts, text, message):
  error = request_error(CAPABILITIES[kind], prompts, text)
  assert (error is None) if message is None else (message in error), error


def test_bad_images_give_messages(tmp_path, monkeypatch):
  broken = tmp_path / "broken.jpg"
  broken.write_bytes(b"not an image")
  good = tmp_path / "good.png"
  Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(good)
  assert demo.load_image(None) == (None, "Upload an image first.")
  image, message = demo.load_image(str(broken))
  assert image is None and message.startswith("Cannot use this file as an image") and "\n" not in message
  image, message = demo.load_image(str(good))
  assert message is None and image.shape == (30, 40, 3)
  monkeypatch.setattr(demo, "MAX_PIXELS", 1000)
  image, message = demo.load_image(str(good))
  assert image is None and "at most" in message


def test_prompts_are_drawn_and_described():
  image = np.zeros((60, 80, 3), np.uint8)
  p = Prompts(points=((10, 10, 1), (30, 30, 0)), box=(5, 5, 70, 50))
  drawn = demo.draw_prompts(image, p)
  assert drawn.shape == image.shape and drawn[10, 10, 1] > 200 and drawn[30, 30, 0] > 200
  assert demo.describe_prompts(p, " zebra ") == 'points 10,10 (+), 30,30 (-); box 5,5,70,50; text "zebra"'


@pytest.fixture(scope="module")
def tiny_sam():
  """A small random SAM, built without running its initialisers (one XLA compile each: slow on CPU)."""
  cfg = sam_config("vit_b", img_size=64, embed_dim=32, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=4)
  model = sam_weights.abstract_model(cfg)
  rng = np.random.default_rng(3)
  assign_params(model, {k: rng.normal(0, 0.2, s).astype(np.float32) for k, s in param_shapes(model).items()})
  return model


def test_sam_encodes_each_image_once_and_matches_the_predictor(tiny_sam):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
  b = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)  # the same size: no recompilation
  seg = Segmenter("sam", SamPredictor(tiny_sam), cache_size=2)
  seg.encode(a)
  first = seg.answer(a, Prompts(points=((20, 10, 1),)))
  box = seg.answer(a, Prompts(box=(5, 5, 40, 30)))
  assert seg.encodes == 1, "later prompts on the same image reuse its embedding"
  seg.answer(b, Prompts(points=((3, 3, 1),)))
  again = seg.answer(a, Prompts(points=((20, 10, 1),)))
  assert seg.encodes == 2, "switching back to a cached image does not encode it again"
  np.testing.assert_array_equal(first.mask, again.mask)
  assert first.score_name == "predicted IoU" and first.mask.shape == (48, 64)

  reference = seg.predictor  # what python -m jaxris.predict computes: set_image, one mask, logits > 0
  reference.set_image(a)
  logits, scores, _ = reference.predict(box=np.array([5, 5, 40, 30], np.float32), multimask_output=False,
                                        return_logits=True)
  np.testing.assert_array_equal(box.mask, logits[0] > 0)
  assert box.score == pytest.approx(float(scores[0]))
  with pytest.raises(ValueError, match="does not take text"):
    seg.answer(a, Prompts(points=((1, 1, 1),)), "a phrase")


# --- Command line: help, and one line + exit 2 for anything that keeps it from starting.

def test_help_and_start_up_errors(tmp_path, capsys):
  with pytest.raises(SystemExit) as exit_:
    demo.main(["--help"])
  out = capsys.readouterr().out
  assert exit_.value.code == 0 and "--weights" in out and "--share" in out and "127.0.0.1" in out
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "config.json").write_text('{"family": "sam", "config": {}}')
  (broken / "params.safetensors").write_bytes(b"garbage")
  cases = [([], "one of the arguments --weights --workdir is required"),
           (["--weights", str(tmp_path / "missing")], "not found"),
           (["--workdir", str(tmp_path)], "train first"),
           (["--weights", str(broken)], "cannot load weights"),
           (["--weights", str(broken), "--port", "70000"], "not a TCP port")]
  for argv, message in cases:
    assert demo.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
  run = subprocess.run([sys.executable, "-m", "jaxris.demo", "--weights", str(tmp_path / "missing")],
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 2 and "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1


# --- The real app in a real browser, with real MobileSAM weights.

@pytest.fixture(scope="module")
def mobile_sam(tmp_path_factory):
  """MobileSAM converted by python -m jaxris.weights.fetch (its checked download is cached)."""
  out = str(tmp_path_factory.mktemp("weights") / "mobile_sam")
  run = subprocess.run([sys.executable, "-m", "jaxris.weights.fetch", "mobile_sam", "--out", out],
                       capture_output=True, text=True, timeout=900)
  assert run.returncode == 0, f"could not fetch the MobileSAM weights:\n{run.stdout}\n{run.stderr}"
  return out


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log_path: str, timeout: float = 600) -> None:
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if proc.poll() is not None:
      raise AssertionError(f"the demo exited with {proc.returncode}:\n{open(log_path).read()[-4000:]}")
    try:
      with urllib.request.urlopen(url, timeout=5) as r:
        if r.status == 200:
          return
    except OSError:
      pass
    time.sleep(1)
  raise AssertionError(f"the demo did not answer on {url} within {timeout} s:\n{open(log_path).read()[-4000:]}")


def test_browser_click_gives_the_predict_cli_mask(mobile_sam, tmp_path, record_property):
  from playwright.sync_api import sync_playwright  # the [test] extra installs it; an ImportError fails the test

  assert os.path.exists(CHROMIUM), f"{CHROMIUM} missing: apt-get install -y chromium (.ci/run does)"
  import skimage.data

  photo = str(tmp_path / "astronaut.png")
  Image.fromarray(skimage.data.astronaut()).save(photo)  # 512x512 RGB
  x, y = 250, 150                                       # on the astronaut's face
  port = _free_port()
  url = f"http://127.0.0.1:{port}/"
  env = dict(os.environ, GRADIO_TEMP_DIR=str(tmp_path / "gradio"), GRADIO_ANALYTICS_ENABLED="False")
  log_path = str(tmp_path / "demo.log")
  with open(log_path, "w") as log:
    server = subprocess.Popen([sys.executable, "-m", "jaxris.demo", "--weights", mobile_sam, "--port", str(port)],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
  # The reference answer, computed while the demo starts: the predict CLI on the same file and point.
  cli = subprocess.Popen([sys.executable, "-m", "jaxris.predict", "--weights", mobile_sam, "--image", photo,
                          "--point", f"{x},{y}", "--out", str(tmp_path / "cli")],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    _wait_for_server(url, server, log_path)
    with sync_playwright() as pw:
      browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
      page = browser.new_page(viewport={"width": 1400, "height": 1100})
      outside = []
      def local_only(route):  # the page may reach the demo only; anything else is recorded and refused
        if route.request.url.startswith(url):
          route.continue_()
        else:
          outside.append(route.request.url)
          route.abort()
      page.route("**/*", local_only)
      page.goto(url)
      status = page.locator("#status textarea")
      page.locator("#input_image input[type=file]").set_input_files(photo)
      page.wait_for_function("document.querySelector('#status textarea').value.startsWith('Image 512x512 ready')",
                             timeout=300_000)
      img = page.locator("#input_image img").first
      box = img.bounding_box()
      natural = img.evaluate("e => [e.naturalWidth, e.naturalHeight]")
      assert natural == [512, 512], natural
      scale = min(box["width"] / 512, box["height"] / 512, 1)  # how Gradio maps a click to image pixels
      left = box["x"] + (box["width"] - 512 * scale) / 2
      top = box["y"] + (box["height"] - 512 * scale) / 2
      page.mouse.click(left + x * scale, top + y * scale)
      page.wait_for_function("document.querySelector('#status textarea').value.includes('predicted IoU')",
                             timeout=300_000)
      message = status.input_value()
      assert f"points {x},{y} (+)" in message, message
      mask_img = page.locator("#mask img").first
      page.wait_for_function("() => { const i = document.querySelector('#overlay img');"
                             " return i && i.complete && i.naturalWidth === 512; }", timeout=60_000)
      png = page.request.get(mask_img.get_attribute("src")).body()
      shot = str(tmp_path / "demo_screenshot.png")
      page.screenshot(path=shot, full_page=True)
      browser.close()
    print(f"\ndemo screenshot: {shot}\nstatus: {message}")
    record_property("screenshot", shot)
    assert not outside, f"the page tried to reach other hosts: {outside}"

    mask_path = tmp_path / "demo_mask.png"
    mask_path.write_bytes(png)
    mask = np.asarray(Image.open(mask_path).convert("L"))
    assert cli.wait(timeout=600) == 0, cli.stdout.read()
    expected = np.asarray(Image.open(tmp_path / "cli" / "astronaut_mask.png"))
    assert mask.shape == expected.shape == (512, 512)
    assert 0 < (mask > 0).sum() < mask.size / 2, "a non-empty mask of part of the photo"
    np.testing.assert_array_equal(mask, expected)
    iou = re.search(r"predicted IoU: ([0-9.]+)", message).group(1)
    assert abs(float(iou) - _cli_score(tmp_path / "cli" / "astronaut_scores.json")) < 1e-3
  finally:
    for proc in (server, cli):
      if proc.poll() is None:
        proc.terminate()
        try:
          proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
          proc.kill()


def _cli_score(path) -> float:
  import json

  scores = json.loads(path.read_text())
  return scores["iou_predictions"][scores["best"]]


class _TextPredictor:
  """Stands in for EvfPredictor / RisPredictor: records what it is asked, returns fixed logits."""
  cut = float(np.log(0.35 / 0.65))  # a DIT export's threshold 0.35: logits are shifted by it

  def __init__(self, takes_prompts: bool):
    self.calls, self.takes_prompts = [], takes_prompts

  def predict(self, image, text, **prompts):
    assert self.takes_prompts or not prompts
    self.calls.append((text, prompts))
    logits = np.full(image.shape[:2], -5.0, np.float32)
    logits[2:6, 3:9] = 1.0
    return logits

  def predict_with_target(self, image, text, **prompts):
    return self.predict(image, text, **prompts), None


def test_text_models_get_the_phrase_and_their_prompts():
  image = np.zeros((10, 12, 3), np.uint8)
  evf = Segmenter("evf", _TextPredictor(takes_prompts=True))
  answer = evf.answer(image, Prompts(points=((3, 4, 1), (8, 2, 0)), box=(1, 1, 10, 9)), "  the zebra ")
  text, prompts = evf.predictor.calls[0]
  assert text == "the zebra" and prompts["boxes"] == (1, 1, 10, 9)
  np.testing.assert_array_equal(prompts["points"], [[3, 4, 1], [8, 2, 0]])
  assert answer.mask.sum() == 24 and answer.score_name == "mean mask probability"
  assert answer.score == pytest.approx(1 / (1 + np.exp(-(1.0 + _TextPredictor.cut))))
  dit = Segmenter("dit", _TextPredictor(takes_prompts=False))
  assert dit.answer(image, Prompts(), "the zebra").mask.sum() == 24 and dit.encodes == 0
  with pytest.raises(ValueError, match="does not take points"):
    dit.answer(image, Prompts(points=((1, 1, 1),)), "the zebra")


class _BridgePredictor(_TextPredictor):
  """A bridge whose no-target head answers `no_target` (None: trained without the head)."""

  def __init__(self, no_target):
    super().__init__(takes_prompts=False)
    self.no_target = no_target

  def predict_with_target(self, image, text):
    logits = self.predict(image, text)
    return (np.minimum(logits, -1.0) if self.no_target else logits), self.no_target


@pytest.mark.parametrize("said", [True, False, None])
def test_the_bridge_reports_its_no_target_head(said):
  image = np.zeros((10, 12, 3), np.uint8)
  bridge = Segmenter("bridge", _BridgePredictor(said))
  answer = bridge.answer(image, Prompts(), " the purple star ")
  assert bridge.predictor.calls[0][0] == "the purple star" and answer.no_target is bool(said)
  status = describe(answer, Prompts(), "the purple star")
  if said:
    assert not answer.mask.any() and status.startswith("No target") and 'text "the purple star"' in status
  else:
    assert answer.mask.sum() == 24 and status.startswith("mean mask probability")
  with pytest.raises(ValueError, match="does not take points"):
    bridge.answer(image, Prompts(points=((1, 1, 1),)), "the zebra")
