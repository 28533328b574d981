"""A real headless Chromium for the page tests: find it, run it in its own process group, and
measure what it rendered (images decoded, sections, banner and title boxes)."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess

import pytest


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def run_browser(binary: str, args: list[str], profile, timeout: float = 40.0) -> subprocess.CompletedProcess:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    # Own process group, so a hung browser and its helpers can be killed as a unit.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"chromium did not finish within {timeout} s: {' '.join(args)}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # leftover helpers (crashpad, zygote) of this run only
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


CHECK_SCRIPT = """<script>
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; });
  var ids = Array.prototype.map.call(document.querySelectorAll('section[id]'), function (s) { return s.id; });
  var box = function (sel) {
    var el = document.querySelector(sel);
    if (!el) { return null; }
    var r = el.getBoundingClientRect();
    return {top: r.top, bottom: r.bottom, width: r.width, background: getComputedStyle(el).backgroundColor};
  };
  var pre = document.createElement('pre');
  pre.id = 'result';
  pre.textContent = JSON.stringify({images: imgs.length, decoded: ok.length, sections: ids,
    widths: imgs.map(function (i) { return i.naturalWidth; }), banner: box('.banner'), title: box('h1'),
    viewport: window.innerWidth});
  document.body.appendChild(pre);
});
</script>"""


def browser_check(binary: str, page: str, tmp_path) -> dict:
    """What CHECK_SCRIPT measures on ``page`` (scripts allowed for the checker only)."""
    checked = page.replace("default-src 'none';", "default-src 'none'; script-src 'unsafe-inline';", 1)
    checked = checked.replace("</body>", CHECK_SCRIPT + "</body>", 1)
    check_path = tmp_path / "check.html"
    check_path.write_text(checked, encoding="utf-8")
    res = run_browser(
        binary,
        [
            "--run-all-compositor-stages-before-draw",
            "--virtual-time-budget=5000",
            "--dump-dom",
            "--window-size=1200,900",
            check_path.as_uri(),
        ],
        tmp_path / "p2",
    )
    m = re.search(r'<pre id="result">(.*?)</pre>', res.stdout, re.S)
    assert m, f"checker did not run; stderr: {res.stderr[-2000:]}"
    return json.loads(html.unescape(m.group(1)))
