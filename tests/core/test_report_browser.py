"""The report page in a real browser: Debian's chromium renders it from file:// into a screenshot.

.ci/run installs chromium where it is missing; elsewhere: ``apt-get install chromium``.
"""

import shutil
import subprocess

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from papernotes.core.experiments import Experiment, ExperimentResult, Method, judge, run_experiments


def _with_figure(ctx):
    fig = Figure(figsize=(4, 3))
    ax = fig.subplots()
    ax.plot([1, 2, 3], [3, 1, 2], marker="o")
    fig.savefig(ctx.out_dir / "curve.png", dpi=80)
    goal = judge("runs faster", 2.2, ">=", 2.0, paper="2-3x", method="Method A")
    return ExperimentResult(figures=["curve.png"], goals=[goal])


def test_the_report_renders_in_headless_chromium_and_is_not_blank(tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "chromium is not installed: apt-get install chromium (.ci/run does this)"
    methods = (Method("Method A", "Large Model", "lora.md", figure="curve.png"),)
    run_dir, _ = run_experiments([Experiment("tiny", "llm", "a tiny run", _with_figure, methods)], tmp_path)
    shot = tmp_path / "shot.png"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
    flags += ["--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}"]
    command = [browser, *flags, f"--screenshot={shot}", "--window-size=1000,800"]
    page = (run_dir / "index.html").as_uri()
    subprocess.run([*command, page], capture_output=True, timeout=120, check=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (800, 1000)
    colours = len(np.unique(pixels.reshape(-1, 3), axis=0))
    assert colours > 50 and pixels.std() > 10, f"the page rendered nearly blank ({colours} colours)"
    green = (pixels[..., 1].astype(int) - pixels[..., 0]) > 40  # the "met" badge
    assert green.sum() > 50
