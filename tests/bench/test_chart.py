"""The bench chart is a readable PNG, with data and without."""

from __future__ import annotations

from pathlib import Path

from matplotlib.image import imread

from benchmarks.chart import render

TIMELINE = [{"i": i, "spend": i * 0.01, "budget": 10.0 if i < 50 else 7.0, "downgraded": i % 7 == 0}
            for i in range(100)]


def test_render_writes_a_png_with_both_panels(tmp_path: Path) -> None:
    latencies = {"1000/s": [float(x % 90 + 1) for x in range(500)], "100/s": [0.0, 1.5, 2.0, 3.0]}
    out = render(tmp_path / "sub" / "bench.png", latencies, {"timeline": TIMELINE, "savings_pct": 42.0})
    assert out == tmp_path / "sub" / "bench.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(out).shape
    assert min(height, width) > 500


def test_render_without_latencies_or_savings(tmp_path: Path) -> None:
    for latencies, savings in (({}, {"timeline": TIMELINE}), ({"100/s": []}, {})):
        out = render(tmp_path / "empty.png", latencies, savings)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
