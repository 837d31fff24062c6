"""Where and with what a number was produced: versions, git state, device, cluster job, time."""

from __future__ import annotations

import os
import platform
import resource
import socket
import subprocess
import sys
from datetime import datetime, timezone
from functools import cache
from importlib import metadata
from pathlib import Path

import torch

import bench


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@cache
def _git_state() -> dict:
    root = Path(bench.__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
        dirty = (
            subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
            != ""
        )
        return {"git_sha": sha, "git_dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": None, "git_dirty": None}


@cache
def _versions() -> dict:
    return {
        "bench_version": bench.__version__,
        **_git_state(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": _version("torchvision"),
        "open_clip": _version("open_clip_torch"),
        "numpy": _version("numpy"),
        "optuna": _version("optuna"),
        "hostname": socket.gethostname(),
        "platform": sys.platform,
    }


def environment(device: torch.device | None = None) -> dict:
    """Versions and machine facts, and the device the numbers were computed on (``None``: the default one):
    its name (the GPU's, or the CPU's), CUDA version, and torch's CPU thread count (CPU float sums depend
    on it)."""
    if device is None:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.type == "cuda"
    return {
        **_versions(),
        "device": str(device),
        "cuda": torch.version.cuda if cuda else None,
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }


def cluster_ids() -> dict:
    keys = {
        "slurm_job_id": "SLURM_JOB_ID",
        "slurm_array_job_id": "SLURM_ARRAY_JOB_ID",
        "slurm_array_task_id": "SLURM_ARRAY_TASK_ID",
        "slurm_restart_count": "SLURM_RESTART_COUNT",
    }
    return {name: os.environ.get(var) for name, var in keys.items() if os.environ.get(var)}


def peak_host_rss_bytes() -> int:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
