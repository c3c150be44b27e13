"""Open an HTML file in a real headless Chromium and report what rendered, with no extra Python
dependencies: a probe script is put at the top of a copy of the page (so it sees every error the
page's own scripts raise), and on `load` it writes its findings as JSON into the DOM, which
``chromium --dump-dom`` prints. A second run takes a screenshot of the unmodified page."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

PROBE = """<script>
window.__errors = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  if (t && t !== window && t.tagName) { window.__errors.push('resource failed: ' + t.tagName + ' ' + (t.src || '').slice(0, 60)); }
  else { window.__errors.push('js error: ' + e.message); }
}, true);
window.addEventListener('unhandledrejection', function (e) { window.__errors.push('unhandled rejection: ' + e.reason); });
(function () { var orig = console.error; console.error = function () {
  window.__errors.push('console.error: ' + Array.prototype.join.call(arguments, ' ')); orig.apply(console, arguments); }; })();
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var out = {
    errors: window.__errors,
    headings: Array.prototype.map.call(document.querySelectorAll('h2'), function (h) { return h.textContent; }),
    title: document.title,
    images: imgs.length,
    image_alts: imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).map(function (i) { return i.alt; }),
    broken_images: imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).map(function (i) { return i.alt; }),
    toc_links: document.querySelectorAll('#toc a').length,
    // Horizontal overflow: the page is wider than the window when scrollWidth > clientWidth.
    scroll_width: document.documentElement.scrollWidth,
    viewport_width: document.documentElement.clientWidth,
    too_wide: Array.prototype.slice.call(document.body.querySelectorAll('*')).filter(function (e) {
      return e.getBoundingClientRect().right > document.documentElement.clientWidth + 1; }).slice(0, 5)
      .map(function (e) { return e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right) + 'px'; }),
    // Boxes whose content is larger than the box and that scroll it themselves (overflow auto/scroll).
    scroll_boxes: Array.prototype.slice.call(document.body.querySelectorAll('*')).filter(function (e) {
      var st = getComputedStyle(e);
      return (/auto|scroll/.test(st.overflowX) && e.scrollWidth > e.clientWidth) ||
             (/auto|scroll/.test(st.overflowY) && e.scrollHeight > e.clientHeight); })
      .map(function (e) { return {tag: e.tagName, cls: e.className, wider: e.scrollWidth > e.clientWidth,
                                  taller: e.scrollHeight > e.clientHeight}; })
  };
  var pre = document.createElement('pre'); pre.id = '__probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def require_chromium() -> str:
    """The chromium binary; without one the test skips, except under ``CI=true`` where it fails,
    so a CI that lost its browser cannot pass by skipping the only checks of what the user sees."""
    import pytest

    binary = find_chromium()
    if binary is None:
        why = "no chromium binary (apt-get install chromium; .ci/run installs it)"
        if in_ci():
            pytest.fail(f"CI=true but {why}")
        pytest.skip(why)
    return binary


def find_chromium() -> str | None:
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    return next((shutil.which(c) for c in CANDIDATES if shutil.which(c)), None)


def _chromium(binary: str, *args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    try:
        return subprocess.run(
            [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
             "--disable-extensions", "--allow-file-access-from-files", f"--user-data-dir={profile}", *args],
            capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def render_in_chromium(page: str | os.PathLike, *, screenshot: str | os.PathLike | None = None,
                       width: int = 1280, height: int = 4000) -> dict:
    """``{"errors", "headings", "title", "images", "image_alts" (of images that rendered), "broken_images",
    "toc_links", "scroll_width",
    "viewport_width", "too_wide", "scroll_boxes"}`` as the browser saw them in a ``width`` px wide window."""
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no chromium binary found (apt-get install chromium)")
    page = Path(page).resolve()
    text = page.read_text()
    probed = page.with_name(f".probe-{page.name}")
    # After <head>, before the page's own scripts: errors they raise are caught.
    probed.write_text(re.sub(r"<head>", "<head>" + PROBE, text, count=1) if "<head>" in text else PROBE + text)
    try:
        proc = _chromium(binary, "--virtual-time-budget=10000", f"--window-size={width},{height}",
                         "--hide-scrollbars", "--dump-dom", probed.as_uri())
    finally:
        probed.unlink(missing_ok=True)
    m = re.search(r'<pre id="__probe">(.*?)</pre>', proc.stdout, re.S)
    if not m:
        raise AssertionError(f"the page never finished loading in chromium (rc {proc.returncode}); "
                             f"stderr tail: {proc.stderr[-2000:]}")
    import html

    result = json.loads(html.unescape(m.group(1)))
    if screenshot is not None:
        shot = _chromium(binary, f"--screenshot={Path(screenshot).resolve()}", f"--window-size={width},{height}",
                         "--hide-scrollbars", page.as_uri())
        if not Path(screenshot).exists():
            raise AssertionError(f"chromium wrote no screenshot (rc {shot.returncode}): {shot.stderr[-2000:]}")
    return result
