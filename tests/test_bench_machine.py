"""Device info of saved benchmark runs, and the refusal to compare runs from different devices."""

import json
from pathlib import Path

import torch

from sparsezip.bench.machine import comparison_problem, device_info, device_key
from sparsezip.testing.inprocess import InProcessRun, run_pytest_in_process

CPU = {"device_type": "cpu", "gpu_name": None, "cpu_model": "Xeon A"}
H100 = {"device_type": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_capability": "9.0"}
A100 = {"device_type": "cuda", "gpu_name": "NVIDIA A100-SXM4-40GB", "gpu_capability": "8.0"}


def test_device_info_records_what_the_brief_asks_for() -> None:
    info = device_info(torch.device("cpu"))
    assert info["device_type"] == "cpu" and info["gpu_name"] is None
    assert info["torch"] == torch.__version__ and info["transformers"] and info["cpu_model"]
    json.dumps(info)  # JSON-friendly


def test_device_key_is_one_folder_per_device() -> None:
    assert device_key(CPU) == "cpu"
    assert device_key(H100) == "cuda-NVIDIA-H100-80GB-HBM3"
    assert device_key(A100) != device_key(H100)


def test_comparison_refuses_other_devices_only() -> None:
    assert comparison_problem(CPU, {**CPU, "cpu_model": "Xeon B"}, "x") is None  # CPU model: compared
    assert comparison_problem(H100, dict(H100), "x") is None
    for current, saved, word in ((CPU, H100, "device_type"), (H100, A100, "gpu_name"), (H100, CPU, "cpu")):
        problem = comparison_problem(current, saved, "of yesterday")
        assert problem and "refusing to compare" in problem and word in problem
    assert "records no device" in comparison_problem(CPU, None, "of yesterday")


BENCH_TEST = """
def test_tiny(benchmark):
    benchmark.pedantic(sum, args=([1, 2, 3],), rounds=2)
"""


def _pytest(tmp_path: Path, *args: str) -> InProcessRun:
    """Run pytest in ``tmp_path``, in this process (torch and friends already imported: ~0.3 s instead of ~4 s
    a subprocess), with the repository's root conftest as a plugin (its options and benchmark hooks), on a
    one-line benchmark."""
    return run_pytest_in_process(tmp_path, ["-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                                            f"--benchmark-storage={tmp_path / 'store'}", *args], root_conftest=True)


def test_saved_runs_record_the_device_and_cross_device_compare_refuses(tmp_path: Path) -> None:
    (tmp_path / "test_tiny.py").write_text(BENCH_TEST)
    missing = _pytest(tmp_path, "--benchmark-compare")
    assert missing.returncode == 4 and "no stored run" in missing.stderr, missing.stdout + missing.stderr

    saved = _pytest(tmp_path, "--benchmark-save=base")
    assert saved.returncode == 0, saved.stdout + saved.stderr
    [run] = (tmp_path / "store").glob("*/0001_base.json")
    data = json.loads(run.read_text())
    assert data["machine_info"]["sparsezip"]["device_type"] == "cpu"
    assert data["benchmarks"][0]["stats"]["rounds"] == 2  # timing on, although nothing said --benchmark-enable

    same = _pytest(tmp_path, "--benchmark-compare")
    assert same.returncode == 0, same.stdout + same.stderr

    data["machine_info"]["sparsezip"].update(H100)
    run.write_text(json.dumps(data))
    other = _pytest(tmp_path, "--benchmark-compare")
    assert other.returncode == 4, other.stdout + other.stderr
    assert "refusing to compare benchmarks across devices" in other.stderr
    assert "device_type='cpu'" in other.stderr and "device_type='cuda'" in other.stderr
