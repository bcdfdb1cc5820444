"""The rendered MP4 and the HTML viewer, looked at by a headless Chromium (screenshots).

Needs Debian's chromium + chromedriver (installed by .ci/run); skips clearly without them.
"""

import io
import json

import numpy as np
import pytest

from tests.browser_support import headless_chromium, require_browser

webdriver = require_browser()
pytest.importorskip("imageio_ffmpeg", reason="video needs the video extra: pip install 'dualpose[video]'")
from PIL import Image  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from dualpose.video.lift import Lifter  # noqa: E402
from dualpose.video.pipeline import InferOptions, run_infer  # noqa: E402
from dualpose.video.sample import make_scene  # noqa: E402
from tests.video_support import ScriptedDetector, tiny_weights, write_stick_video  # noqa: E402

pytestmark = pytest.mark.browser
W, H = 320, 180


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("browser")
    scene = make_scene(seconds=1.0, fps=30.0, seed=5, width=W, height=H)
    _, coco = scene.project()
    video = write_stick_video(tmp / "clip.mp4", coco, W, H, 30.0)
    lifter = Lifter.from_weights(tiny_weights(tmp / "w"), device="cpu")
    run = run_infer(video, tmp / "out", lifter, InferOptions(render=True, formats=("npz",)),
                    detector=ScriptedDetector(coco))
    return run.files


@pytest.fixture
def browser(tmp_path):
    yield from headless_chromium(tmp_path, ("--autoplay-policy=no-user-gesture-required",), size="900,700")


def _screenshot(driver) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")).astype(int)


def _blue(img):  # left limbs (40, 120, 255)
    return int(((img[..., 2] > 200) & (img[..., 0] < 110) & (img[..., 1] > 70) & (img[..., 1] < 170)).sum())


def _orange(img):  # right limbs (255, 140, 0)
    return int(((img[..., 0] > 200) & (img[..., 1] > 90) & (img[..., 1] < 190) & (img[..., 2] < 80)).sum())


def test_viewer_draws_skeletons_offline_and_orbits(outputs, browser):
    page = outputs["html"]
    text = page.read_text()
    assert "<script src" not in text and "http://" not in text and "https://" not in text  # nothing to fetch
    browser.get(page.as_uri() + "?paused")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script("return document.body.dataset.ready") == "1")
    first = _screenshot(browser)
    assert _blue(first) > 50 and _orange(first) > 50, "no skeleton drawn"
    # orbit: drag the canvas; the picture changes, the skeletons stay visible
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = browser.find_element(By.ID, "view")
    ActionChains(browser).move_to_element(canvas).click_and_hold().move_by_offset(120, 0).release().perform()
    second = _screenshot(browser)
    assert _blue(second) > 50 and np.abs(second - first).sum() > 0
    # the slider scrubs frames
    browser.execute_script("const s = document.getElementById('slider'); s.value = 20;"
                           "s.dispatchEvent(new Event('input'));")
    assert browser.execute_script("return document.body.dataset.frame") == "20"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, json.dumps(errors)


def test_rendered_mp4_plays_in_chromium(outputs, browser, tmp_path):
    mp4 = outputs["mp4"]
    page = tmp_path / "play.html"
    page.write_text(f'<html><body style="margin:0;background:#000"><video id="v" src="{mp4.as_uri()}" muted '
                    'style="display:block"></video></body></html>')
    browser.get(page.as_uri())
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const v = document.getElementById('v'); return v.readyState >= 2 && v.videoWidth > 0"))
    size = browser.execute_script("const v = document.getElementById('v'); return [v.videoWidth, v.videoHeight]")
    assert size == [W + H, H]
    browser.execute_script("const v = document.getElementById('v'); v.currentTime = 0.4;")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const v = document.getElementById('v'); return !v.seeking && v.currentTime > 0.3"))
    shot = _screenshot(browser)[:H, :W + H]
    assert _blue(shot[:, :W]) > 10 and _blue(shot[:, W:]) > 10, "video or 3D panel not shown"
