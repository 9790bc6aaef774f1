import importlib.util
import os
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
PARITY_ROOT = Path(os.environ.get("HART_PARITY_DIR", REPO.parent / "shared" / "parity"))
FIXTURES = ("hart_tiny_a", "hart_tiny_c_sharedaln")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


def parity_dir(name: str) -> Path:
    """A reference fixture folder; CI sets HART_REQUIRE_PARITY=1 so a missing one fails."""
    path = PARITY_ROOT / name
    if not path.is_dir():
        if os.environ.get("HART_REQUIRE_PARITY") == "1":
            raise FileNotFoundError(f"parity fixture {path} is missing")
        pytest.skip(f"parity fixture {path} not present")
    return path


@pytest.fixture(params=FIXTURES)
def fixture_dir(request) -> Path:
    return parity_dir(request.param)


def copy_official(dst: Path, name: str = "hart_tiny_a") -> Path:
    """Writable copy of a released-layout fixture (llm/ + tokenizer/; the fixture files are read-only)."""
    src = parity_dir(name)
    for sub in ("llm", "tokenizer"):
        (dst / sub).mkdir(parents=True)
        for f in (src / sub).iterdir():
            shutil.copyfile(f, dst / sub / f.name)
    return dst


def load_benchmark(name: str):
    """A script of benchmarks/ as a module (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
