"""dist/compat.html from a real `invoke verify` run, rendered by headless Chromium (Debian's package).

One run, guests booted side by side (--jobs 2): the CI kernels, one holding an object the verifier
rejects (a failed cell with its verifier log), and a third kernel whose image package is not served
(unproved, no boot). The w0 variants are skipped as build-all records it. Chromium's DOM dump is
compared cell by cell with verify.json, and screenshots are kept beside the page for a look.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED_CACHE
from conftest_loader import MINI_SOURCE, compile_core
from test_verify_shards import KERNELS, invoke, mini_matrix, mini_wheel

UNSERVED = "5.10.0-32-cloud-amd64"
REJECTED_ON = "6.1.0-50-cloud-amd64"
CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (scripts/setup.sh)")


def chromium(page: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    """Headless Chromium on a fresh profile, with nothing fetched besides the page."""
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--disable-component-update", "--disable-sync", "--no-first-run",
                           f"--user-data-dir={profile}", *args],
                          check=False, capture_output=True, text=True, timeout=120)


class Cells(HTMLParser):
    """The grid's <td> cells (data-* attributes) and the summary line's figures from a DOM dump."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict[str, str]] = []
        self.rows: list[dict[str, str]] = []
        self.summary: dict[str, str] = {}
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "td" and "data-outcome" in a:
            self.cells.append(a)
        elif tag == "tr" and "data-release" in a:
            self.rows.append(a)
        elif a.get("id") == "summary":
            self.summary = a
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("#"):
                self.external.append(a[key])


def _expected(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    """(kernel, unit) -> outcome, straight from verify.json."""
    found = {}
    for kernel in doc["kernels"]:
        for row in kernel["rows"]:
            steps = [row[k] for k in ("select", "load", "attach", "event")]
            outcome = "fail" if any(s not in ("ok", "n/a") for s in steps) else (
                "n/a" if "n/a" in steps or any(p["status"] == "n/a" for p in row["programs"]) else "ok")
            found[(kernel["release"], row["unit"])] = outcome
        for skipped in kernel["skipped"]:
            found[(kernel["release"], skipped["unit"])] = "skipped"
    return found


def test_compat_page_shows_the_verify_matrix(tmp_path: Path) -> None:
    kernels = {**KERNELS, UNSERVED: ("bullseye", "5.10.223-1")}
    matrix = mini_matrix(tmp_path / "project", kernels, {UNSERVED: "linux-image-hids-test-not-served"})
    work = tmp_path / "objects"
    good, rejected = compile_core(MINI_SOURCE, work), compile_core(MINI_SOURCE, work, "-DHIDS_TEST_UNCHECKED_LOOKUP")
    objects = {("mini", r): good for r in kernels} | {("rejected", REJECTED_ON): rejected}
    dist = mini_wheel(tmp_path, objects, {r: v for r, (_, v) in kernels.items()})
    proc = invoke("verify", "--matrix", str(matrix), "--dist", str(dist), "--cache-dir", str(SHARED_CACHE),
                  "--timeout", "400", "--jobs", "2")
    assert proc.returncode == 7, proc.stderr[-3000:]  # the rejected object fails its kernel
    doc = json.loads((dist / "verify.json").read_text())
    by_release = {k["release"]: k for k in doc["kernels"]}
    assert by_release[UNSERVED]["status"] == "no image" and doc["unproved"] == [UNSERVED]
    booted = [by_release[r] for r in KERNELS]
    assert all(k["uname"] == k["release"] for k in booted)
    # Side by side: the boots overlapped, so the boot step took less than their sum.
    step = re.search(r"boot 2 guest\(s\), 2 at a time \(one vCPU each\): ([0-9.]+)s", proc.stderr)
    assert step and float(step.group(1)) < 0.9 * sum(k["boot_seconds"] for k in booted), proc.stderr[-2000:]

    page = dist / "compat.html"
    html = page.read_text()
    assert "<link" not in html and "<script src" not in html and "@import" not in html and "url(" not in html
    dump = chromium(page, tmp_path / "profile-dom", "--dump-dom", page.as_uri())
    assert dump.returncode == 0, dump.stderr[-2000:]
    parsed = Cells()
    parsed.feed(dump.stdout)
    assert parsed.external == []
    assert [r["data-release"] for r in parsed.rows] == [k["release"] for k in doc["kernels"]]
    columns = {(c["data-program"], c["data-variant"]) for c in parsed.cells}
    assert columns == {("mini", "w1d0"), ("mini", "w0d0"), ("rejected", "w1d0"), ("rejected", "w0d0")}
    assert len(parsed.cells) == len(doc["kernels"]) * len(columns)
    expected = _expected(doc)
    shown = {}
    for row, start in zip(parsed.rows, range(0, len(parsed.cells), len(columns)), strict=True):
        for cell in parsed.cells[start:start + len(columns)]:
            if cell["data-unit"]:
                shown[(row["data-release"], cell["data-unit"])] = cell["data-outcome"]
            elif row["data-release"] == UNSERVED:
                assert cell["data-outcome"] == "unproved"
            else:  # no object of that program for this kernel (rejected exists on one kernel only)
                assert cell["data-outcome"] == "absent" and cell["data-program"] == "rejected"
    assert shown == expected
    assert shown[(REJECTED_ON, f"rejected/{REJECTED_ON}/w1d0")] == "fail"
    rows = [r for k in doc["kernels"] for r in k["rows"]]
    assert parsed.summary["data-kernels"] == str(len(doc["kernels"]))
    assert parsed.summary["data-objects"] == str(len(rows))
    # The failed cell carries the kernel's own verifier complaint, escaped, inside its <details>.
    assert "invalid access to map value" in dump.stdout

    for name, url in (("compat.png", page.as_uri()),
                      ("compat-open.png", f"{page.as_uri()}#rejected/{REJECTED_ON}/w1d0")):
        shot = chromium(page, tmp_path / f"profile-{name}", f"--screenshot={dist / name}", "--window-size=1280,900",
                        "--hide-scrollbars", url)
        assert shot.returncode == 0, shot.stderr[-2000:]
        data = (dist / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and int.from_bytes(data[16:20], "big") == 1280
        assert len(data) > 20_000  # a rendered grid, not a blank page
