"""The HTML report opened in a real browser (headless Chromium) with the network cut off shows its charts."""

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from ilit.report import write_report

pytest.importorskip("matplotlib", reason="the core session installs ilit-core[report]; charts need matplotlib")
BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
                if shutil.which(b)), None)
# CI (.ci/run) installs Chromium and sets CI=true: there a missing browser is a failure, not a skip
pytestmark = pytest.mark.skipif(BROWSER is None and not os.environ.get("CI"),
                                reason="no Chromium on this machine (apt-get install chromium); "
                                "test_report.py still checks the HTML is self-contained")
OLD = os.path.join(os.path.dirname(__file__), "data", "history_ilit0.1.0_format1.json")
STAR = np.array([0xF2, 0xA9, 0x00]) / 255  # the returned model's star in the charts (no CSS uses it)
GOAL = np.array([0xD6, 0x27, 0x28]) / 255  # the goal line


def screenshot(html_path, png_path, height=3400):
    """Chromium, headless, with every connection sent to a closed port and every host name unresolvable."""
    assert BROWSER is not None, "CI=true but no Chromium: .ci/run installs it with apt-get install chromium"
    cmd = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND", f"--window-size=1280,{height}",
           f"--user-data-dir={os.path.dirname(png_path)}/profile", f"--screenshot={png_path}",
           f"file://{html_path}"]
    subprocess.run(cmd, capture_output=True, timeout=180, check=True)
    import matplotlib.image

    return matplotlib.image.imread(png_path)[..., :3]


def pixels_near(img, color, tol=0.06):
    return int((np.abs(img - color).max(axis=-1) < tol).sum())


def test_the_report_shows_its_charts_in_chromium_without_network(tmp_path):
    with open(OLD) as f:
        h = json.load(f)
    h["strategy_insights"] = {"op_sensitivity": {"dense4": 0.13, "dense2": 0.02}}
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "history.json").write_text(json.dumps(h))
    html_path = write_report(ws, str(tmp_path / "out"), "html")
    img = screenshot(html_path, str(tmp_path / "report.png"))
    assert img.shape == (3400, 1280, 3)
    # the star and the goal line are drawn inside the embedded PNG charts only
    assert pixels_near(img, STAR) > 50 and pixels_near(img, GOAL) > 10
    # the same page without its images has none: the pixels above came from the charts
    html = open(html_path, encoding="utf-8").read()
    bare = tmp_path / "out" / "bare.html"
    bare.write_text(re.sub(r'<img [^>]*>', "", html), encoding="utf-8")
    control = screenshot(str(bare), str(tmp_path / "bare.png"))
    assert pixels_near(control, STAR) == 0
    keep = os.environ.get("ILIT_KEEP_SCREENSHOT")
    if keep:  # for a human look: ILIT_KEEP_SCREENSHOT=/tmp/report.png pytest tests/test_report_browser.py
        shutil.copy(tmp_path / "report.png", keep)
