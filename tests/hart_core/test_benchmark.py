"""benchmarks/bench_t2i.py runs end to end on a tiny model and reports consistent timings."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_t2i.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_t2i", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("autocast", ["off", "bf16"])
def test_debug_run_reports_parts_that_add_up(tmp_path, autocast):
    bench = load_script()
    out = tmp_path / "bench.json"
    profile = tmp_path / "profile.txt"
    payload = bench.main(["--config", "debug", "--batch-sizes", "1,2", "--iters", "2", "--warmup", "0",
                          "--steps", "2", "--autocast", autocast, "--json", str(out), "--profile", str(profile)])
    assert json.loads(out.read_text())["autocast"] == autocast
    assert [r["batch_size"] for r in payload["results"]] == [1, 2]
    for r in payload["results"]:
        raw = r["raw_s"]
        for i, total in enumerate(raw["total"]):
            parts = raw["transformer"][i] + raw["diffusion"][i] + raw["vae_decode"][i]
            assert parts == pytest.approx(total, rel=1e-9) and min(raw["diffusion"][i], raw["vae_decode"][i]) > 0
        assert r["images_per_s"] == pytest.approx(r["batch_size"] / r["latency_s_median"])
        assert r["image_shape"][0] == r["batch_size"]
    text = profile.read_text()
    assert text.startswith("batch 1, debug") and "aten::" in text


def test_meta_only_counts_the_official_model_without_memory():
    payload = load_script().main(["--meta-only"])
    counts = payload["params"]
    assert 0.72e9 < counts["transformer_incl_diffusion_head"] < 0.74e9
    assert 36e6 < counts["diffusion_head"] < 38e6
