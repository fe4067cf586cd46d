"""Deliberate defects for rehearsal hosts, to rehearse an ``inv preflight`` failure
(``inv sim-up --defects``, and the end-to-end tests). Tests and rehearsal only.

Every simulated host gets a healthy stand-in root (:func:`prepare_host`) under its host
directory, read by the probe through ``$CLUSTER_PREFLIGHT_ROOT`` (set per address by the
fleet): a NIC ``eth0`` that is up with an address, an RDMA device ``mlx5_0`` whose port 1
is ACTIVE, the NVIDIA driver version and the GPUs' PCIe links, and a copy of the model
directory. :func:`apply` then breaks one thing on one
host; each defect makes exactly one preflight check fail:

=================  ===============================================  ==================
defect             what changes on that host                        failing check
=================  ===============================================  ==================
``model-file``     one weight file of the model copy is removed     ``model.manifest``
``sglang-version`` ``import sglang`` reports another version        ``sw.engine``
``nic``            the NCCL interface ``eth0`` is absent            ``net.nic``
``ib-down``        ``mlx5_0`` port 1 is ``1: DOWN``                 ``net.ib``
``port``           something listens on the host's server port      ``net.ports``
``gpu-busy``       a leftover ``sglang::scheduler`` holds GPU 3      ``gpu.free``
``env-file``       sourcing the env file exits 1                    ``env.file``
=================  ===============================================  ==================

The serving settings that make those checks run: :func:`serving_settings`.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

NIC = "eth0"
IB_DEVICE = "mlx5_0"
MODEL_PATH = "/models/standin-model"
OTHER_SGLANG = "0.0.1-other"
MODEL_FILES = {"config.json": b'{"architectures": ["StandinForCausalLM"]}\n',
               "model.safetensors.index.json": b'{"weight_map": {}}\n',
               "model-00001-of-00002.safetensors": b"\0" * 4096,
               "model-00002-of-00002.safetensors": b"\0" * 2048}
ENV_FAILS = "env-fails"   # marker file in the host directory that makes the env file fail
# The env file: shared by every host (one file system), failing where the marker exists.
ENV_FILE_TEXT = (
    "# stand-in env file (cluster/testing/defects.py): fails on hosts with an env-fails marker\n"
    f'if [ -f "$CLUSTER_SIM_ROOT/{ENV_FAILS}" ]; then\n'
    '    echo "env: /opt/missing/setup.sh: No such file or directory" >&2\n'
    "    false\n"
    "fi\n"
)
DEFECTS = ("model-file", "sglang-version", "nic", "ib-down", "port", "gpu-busy", "env-file")
CHECK_OF = {"model-file": "model.manifest", "sglang-version": "sw.engine", "nic": "net.nic",
            "ib-down": "net.ib", "port": "net.ports", "gpu-busy": "gpu.free", "env-file": "env.file"}


def serving_settings(serving: dict[str, Any], env_file: str | Path) -> dict[str, Any]:
    """A copy of a ``serving:`` section that makes preflight check the stand-in NIC, RDMA
    device and model copy, with ``env_file`` sourced first."""
    out = dict(serving, model_path=MODEL_PATH, env_file=str(env_file),
               env={**serving.get("env", {}), "NCCL_SOCKET_IFNAME": NIC})
    for role in ("prefill", "decode"):
        out[role] = dict(serving.get(role, {}), extra_args=["--disaggregation-ib-device", IB_DEVICE])
    return out


def write_env_file(path: Path) -> Path:
    path.write_text(ENV_FILE_TEXT)
    path.chmod(0o644)
    return path


def prepare_host(host_dir: Path, index: int) -> Path:
    """A healthy stand-in root for one host (``host_dir/root``); returns it."""
    root = host_dir / "root"
    nic = root / "sys" / "class" / "net" / NIC
    nic.mkdir(parents=True, exist_ok=True)
    (nic / "operstate").write_text("up\n")
    # TEST-NET-3 documentation addresses: text only, nothing connects to them.
    (nic / "addresses").write_text(f"203.0.113.{index % 250 + 1}/24\n")
    port = root / "sys" / "class" / "infiniband" / IB_DEVICE / "ports" / "1"
    port.mkdir(parents=True, exist_ok=True)
    (port / "state").write_text("4: ACTIVE\n")
    add_gpus(root)
    model = root / MODEL_PATH.lstrip("/")
    model.mkdir(parents=True, exist_ok=True)
    for name, data in MODEL_FILES.items():
        (model / name).write_bytes(data)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


DRIVER_VERSION = "550.54.15"
# The stand-in GPUs' PCI addresses (those of cluster/testing/fixtures/gpu/h100-idle.txt).
GPU_BUSES = tuple(f"0000:{b}:00.0" for b in ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db"))


def add_gpus(root: Path, driver: str = DRIVER_VERSION, width: int = 16) -> None:
    """/proc/driver/nvidia/version and one sysfs PCI device per stand-in GPU (gen 5 x16
    links; ``width`` narrower to rehearse a degraded link)."""
    proc = root / "proc" / "driver" / "nvidia"
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "version").write_text(f"NVRM version: NVIDIA UNIX x86_64 Kernel Module  {driver}  "
                                  "Tue Mar  5 22:23:56 UTC 2024\n")
    for bus in GPU_BUSES:
        device = root / "sys" / "bus" / "pci" / "devices" / bus
        device.mkdir(parents=True, exist_ok=True)
        for name, value in (("vendor", "0x10de"), ("class", "0x030200"),
                            ("current_link_speed", "32.0 GT/s PCIe"), ("max_link_speed", "32.0 GT/s PCIe"),
                            ("current_link_width", str(width)), ("max_link_width", "16")):
            (device / name).write_text(value + "\n")


def apply(host_dir: Path, defect: str, *, gpu_fixture: Path | None = None) -> None:
    """Break ``defect`` on the host of ``host_dir`` (``port`` is the caller's: :func:`hold_port`).

    ``gpu_fixture``: the GPU rows the host shows now (``gpu-busy`` adds a process to them).
    """
    root = host_dir / "root"
    if defect == "model-file":
        (root / MODEL_PATH.lstrip("/") / "model-00002-of-00002.safetensors").unlink(missing_ok=True)
    elif defect == "sglang-version":
        (host_dir / "sglang-version").write_text(OTHER_SGLANG + "\n")
    elif defect == "nic":
        nic = root / "sys" / "class" / "net" / NIC
        for child in nic.iterdir():
            child.unlink()
        nic.rmdir()
    elif defect == "ib-down":
        (root / "sys" / "class" / "infiniband" / IB_DEVICE / "ports" / "1" / "state").write_text("1: DOWN\n")
    elif defect == "gpu-busy":
        if gpu_fixture is None:
            raise ValueError("gpu-busy needs the host's GPU fixture")
        busy = host_dir / "gpus-busy.txt"
        busy.write_text(busy_gpu_rows(gpu_fixture.read_text()))
        busy.chmod(0o644)
        (host_dir / "gpu-state").write_text(f"{busy}\n")
    elif defect == "env-file":
        (host_dir / ENV_FAILS).write_text("1\n")
    elif defect != "port":
        raise ValueError(f"unknown defect {defect!r}: expected one of {', '.join(DEFECTS)}")
    for path in host_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)


def busy_gpu_rows(fixture: str, gpu: int = 3, mib: int = 71234) -> str:
    """A stand-in GPU fixture where a leftover scheduler holds ``mib`` MiB on GPU ``gpu``."""
    rows, _, _apps = fixture.partition("@@compute-apps")
    lines = [line for line in rows.splitlines() if line.strip()]
    fields = lines[gpu % len(lines)].split(", ")
    fields[4] = str(mib)   # memory.used (cluster.gpu.BASE_FIELDS order)
    lines[gpu % len(lines)] = ", ".join(fields)
    app = f"{fields[1]}, 4242, {mib}, sglang::scheduler_TP{fields[0]}"
    return "\n".join(lines) + f"\n@@compute-apps\n{app}\n@@compute-apps-exit 0\n"


def hold_port(address: str, port: int) -> socket.socket:
    """A socket listening on ``address:port`` (the ``port`` defect; close it to undo)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((address, port))
    sock.listen(1)
    return sock


def parse_defects(text: str, addresses: list[str]) -> dict[str, str]:
    """``--defects`` of sim-up: ``all`` (every defect, one per host), or comma-separated
    ``NAME`` (given to the next host, from the second on: the first stays a clean
    reference) or ``ADDRESS=NAME``. Returns ``{address: defect}``; ValueError on bad input."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if items == ["all"]:
        items = list(DEFECTS)
    chosen: dict[str, str] = {}
    free = addresses[1:]
    for item in items:
        address, _, name = item.rpartition("=")
        if name not in DEFECTS:
            raise ValueError(f"unknown defect {name!r}: expected all, or some of {', '.join(DEFECTS)}")
        if address:
            if address not in addresses:
                raise ValueError(f"{address} is not a host of this rehearsal cluster")
        else:
            spare = [a for a in free if a not in chosen]
            if not spare:
                raise ValueError(f"{len(items)} defects need {len(items) + 1} hosts (one stays clean): "
                                 "raise --count")
            address = spare[0]
        if address in chosen:
            raise ValueError(f"{address} already has the defect {chosen[address]} (one per host)")
        chosen[address] = name
    return chosen
