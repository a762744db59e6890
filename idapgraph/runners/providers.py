"""onnxruntime execution providers for timing: which one, and how a model is called on it.

``provider`` is ``"cpu"`` (default), ``"cuda"`` (onnxruntime-gpu's ``CUDAExecutionProvider``),
or any full provider name onnxruntime lists. On the CPU a session is called as it is
(``run`` with numpy inputs). On a device, inputs are copied to it once and outputs left there
(onnxruntime's I/O binding), so what is timed is the model, not host-device copies: a plain
``run`` would copy every input in and every output out on each call.
"""

from __future__ import annotations

import subprocess
from functools import lru_cache
from typing import Callable

from ..errors import InputError

CPU = "CPUExecutionProvider"
ALIASES = {"cpu": CPU, "cuda": "CUDAExecutionProvider"}
# onnxruntime's device name (OrtValue / I/O binding) for each device provider
DEVICES = {"CUDAExecutionProvider": "cuda"}


def resolve(provider: str | None) -> str:
    """The full onnxruntime name of ``provider`` (``cpu``, ``cuda`` or a full name), checked to
    be available in the installed onnxruntime; one clear :class:`InputError` otherwise. The
    CPU, which every onnxruntime has, is not looked up (nor onnxruntime imported for it)."""
    name = ALIASES.get(str(provider or "cpu").lower(), provider)
    if not isinstance(name, str) or not name:
        raise InputError(f"provider must be a name such as 'cpu' or 'cuda', got {provider!r}")
    if name == CPU:
        return name
    import onnxruntime as ort

    available = ort.get_available_providers()
    if name not in available:
        hint = (" (install onnxruntime-gpu in place of onnxruntime: pip uninstall onnxruntime; "
                "pip install 'idapgraph[gpu]')" if name == ALIASES["cuda"] else "")
        raise InputError(f"onnxruntime {ort.__version__} here has no {name}: it offers "
                         f"{', '.join(available)}{hint}")
    if name != CPU and name not in DEVICES:
        raise InputError(f"timing on {name} is not supported (choose from cpu, cuda)")
    return name


def session_providers(provider: str) -> list[str]:
    """The provider list of a session: a device provider falls back to the CPU for ops it lacks."""
    return [provider] if provider == CPU else [provider, CPU]


def bound_call(sess, feeds: dict, provider: str = CPU) -> Callable[[], object]:
    """A call of ``sess`` on ``feeds`` to time: on the CPU ``sess.run``; on a device the inputs
    are placed on it once and the outputs bound there (every call then runs the model only;
    onnxruntime synchronises the device at the end of each run)."""
    device = DEVICES.get(provider)
    if device is None:
        return lambda: sess.run(None, feeds)
    return io_bound_call(sess, feeds, device)


def io_bound_call(sess, feeds: dict, device: str) -> Callable[[], object]:
    """``sess`` called through onnxruntime's I/O binding with inputs and outputs on ``device``
    (``"cuda"``, or ``"cpu"``, which the tests use, as no GPU is at hand there); each call
    returns the binding, whose outputs are the run's."""
    import onnxruntime as ort

    io = sess.io_binding()
    held = []  # the OrtValues must live as long as the binding
    for name, arr in feeds.items():
        value = ort.OrtValue.ortvalue_from_numpy(arr, device, 0)
        held.append(value)
        io.bind_ortvalue_input(name, value)
    for out in sess.get_outputs():
        io.bind_output(out.name, device, 0)

    def call():
        sess.run_with_iobinding(io)
        _ = held
        return io

    return call


@lru_cache(maxsize=4)
def device_name(provider: str) -> str | None:
    """What a device provider runs on (the GPU's name), part of a latency table's key; None on
    the CPU."""
    if provider == CPU:
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        names = [s.strip() for s in out.splitlines() if s.strip()]
        if names:
            return names[0]
    except (OSError, subprocess.SubprocessError):
        pass
    return "unknown device"
