"""benchmarks/video_cost.py runs and measures what it claims, at a tiny size (timings are not asserted)."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "video_cost.py"


def test_video_cost_benchmark_reports_flops_params_and_latency():
    spec = importlib.util.spec_from_file_location("video_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(
        ["--models", "tsn", "tsm", "tam", "--num-segments", "2", "--size", "32", "--repeats", "1"]
    )
    rows = result["models"]
    assert result["goals"]["tsm_flops_equal_tsn"] and result["goals"]["tsm_params_equal_tsn"]
    assert rows["tam"]["flops"] > rows["tsn"]["flops"] and rows["tam"]["params"] > rows["tsn"]["params"]
    assert all(r["latency_ms"] > 0 for r in rows.values()) and rows["tsn"]["latency_vs_tsn"] == 1
