"""The report in a real headless browser (Debian's ``chromium``): it renders, logs nothing to
the console, loads nothing from the network, and every image decodes.

``.ci/run`` installs chromium; where it is missing this test is skipped with the install line.
The report itself has no script: the test loads a copy with a small checker script injected
first in ``<head>`` that records errors (resource load failures, ``console.error``, uncaught
exceptions) and, on ``load``, writes the image check into ``<body data-kd-...>`` attributes,
which ``--dump-dom`` prints.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kdtool.report import ReportOptions, write_report

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="Debian's chromium is not installed (/usr/bin/chromium); "
    "`apt-get install -y --no-install-recommends chromium` enables the browser test of the report",
)

CHECKER = """<script>
window.__kdErrors = [];
window.addEventListener("error", function (e) {
  var t = e.target;
  window.__kdErrors.push(t && t.tagName ? "load failed: " + t.tagName : "error: " + e.message);
}, true);
(function () {
  var orig = console.error;
  console.error = function () {
    window.__kdErrors.push("console.error: " + Array.prototype.join.call(arguments, " "));
    orig.apply(console, arguments);
  };
})();
window.addEventListener("load", function () {
  var imgs = document.images, bad = [];
  for (var i = 0; i < imgs.length; i++) {
    if (!imgs[i].complete || imgs[i].naturalWidth === 0) bad.push(imgs[i].alt || String(i));
  }
  document.body.setAttribute("data-kd-images", bad.length ? "broken:" + bad.join("|") : "ok:" + imgs.length);
  document.body.setAttribute("data-kd-errors", String(window.__kdErrors.length) + ":" + window.__kdErrors.join("|"));
  document.body.setAttribute("data-kd-height", String(document.body.scrollHeight));
});
</script>"""


def chromium(args: list[str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    profile = tmp_path / "profile"
    base = [
        str(CHROMIUM),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # any attempt to reach the network fails (and is then caught as a load error)
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path)


def console_lines(stderr: str) -> list[str]:
    """Messages the page wrote to its console (chromium logs them as ``CONSOLE``)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


@pytest.fixture(scope="module")
def report_page(report_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("browser") / report_run.name
    shutil.copytree(report_run, run, symlinks=True)
    return write_report(run, ReportOptions(latency_seconds=0.05))


def test_report_renders_in_chromium_with_decoded_images_and_no_console_errors(
    report_page: Path, tmp_path: Path
) -> None:
    page = report_page.read_text(encoding="utf-8")
    n_images = page.count("<img ")
    assert n_images >= 4
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("<head>", "<head>" + CHECKER, 1), encoding="utf-8")
    result = chromium(["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    images = re.search(r'data-kd-images="([^"]*)"', dom)
    errors = re.search(r'data-kd-errors="([^"]*)"', dom)
    assert images is not None and errors is not None, f"the checker did not run; dom starts {dom[:500]!r}"
    assert images.group(1) == f"ok:{n_images}", images.group(1)
    assert errors.group(1) == "0:", errors.group(1)
    assert console_lines(result.stderr) == []
    height = re.search(r'data-kd-height="(\d+)"', dom)
    assert height is not None and int(height.group(1)) > 1500  # a long page, laid out


def test_unmodified_report_screenshot_is_not_blank(report_page: Path, tmp_path: Path) -> None:
    shot = tmp_path / "shot.png"
    result = chromium(
        ["--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}", report_page.as_uri()],
        tmp_path,
    )
    assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
    assert console_lines(result.stderr) == []
    with Image.open(shot) as img:
        colours = img.convert("RGB").resize((320, 600)).getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50  # text, tables and plots, not an empty page


def test_checker_catches_a_broken_image(tmp_path: Path) -> None:
    """The browser check must fail on a broken page (so a passing check means something)."""
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><head><title>x</title></head><body>"
        '<img alt="bad" src="data:image/png;base64,AAAA"><img alt="net" src="https://example.invalid/x.png">'
        "</body></html>"
    )
    checked = tmp_path / "checked.html"
    checked.write_text(page.read_text().replace("<head>", "<head>" + CHECKER, 1))
    result = chromium(["--virtual-time-budget=10000", "--dump-dom", checked.as_uri()], tmp_path)
    images = re.search(r'data-kd-images="([^"]*)"', result.stdout)
    errors = re.search(r'data-kd-errors="([^"]*)"', result.stdout)
    assert images is not None and images.group(1) == "broken:bad|net"
    assert errors is not None and errors.group(1).startswith("2:")
