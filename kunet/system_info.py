"""What this machine offers kunet: library versions, TensorFlow devices and CPU features."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# CPU flags (as named in /proc/cpuinfo) that decide how fast the net runs on a CPU.
_INTERESTING_CPU_FLAGS = {
    "avx2": "AVX2",
    "fma": "FMA",
    "avx512f": "AVX-512F",
    "avx512_vnni": "AVX-512 VNNI",
    "avx512_bf16": "AVX-512 BF16",
    "amx_bf16": "AMX BF16",
    "amx_tile": "AMX tiles",
}


def cpu_features(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, bool]:
    """Which performance-relevant instruction sets the CPU reports (all False where unknown)."""
    flags: set[str] = set()
    path = Path(cpuinfo_path)
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {label: name in flags for name, label in _INTERESTING_CPU_FLAGS.items()}


def has_native_bf16(features: dict[str, bool]) -> bool:
    """Whether a CPU with these :func:`cpu_features` computes bf16 in hardware (AVX-512 BF16 or AMX); elsewhere
    TensorFlow and PyTorch emulate it, slower than float32."""
    return bool(features.get("AVX-512 BF16") or features.get("AMX BF16"))


def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    path = Path(cpuinfo_path)
    if path.exists():
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def collect() -> dict:
    """Versions, devices and CPU features as a plain dict (imports TensorFlow)."""
    import keras
    import numpy
    import tensorflow as tf

    import kunet

    build = tf.sysconfig.get_build_info()
    return {
        "kunet": kunet.__version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "cuda_build": bool(build.get("is_cuda_build", False)),
        "devices": [f"{d.device_type}: {d.name}" for d in tf.config.list_physical_devices()],
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_features": cpu_features(),
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") != "0",
    }
