"""Pick the compute device: CUDA when present, then Apple MPS, else CPU."""

from __future__ import annotations

from .errors import PerturbStudioError


def resolve_device(device: str = "auto") -> str:
    import torch

    device = (device or "auto").lower()
    if device == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PerturbStudioError("device 'cuda' was asked for but no CUDA GPU is available "
                                 "(this torch build: " + torch.__version__ + ")")
    if device == "mps" and not (getattr(torch.backends, "mps", None)
                                and torch.backends.mps.is_available()):
        raise PerturbStudioError("device 'mps' was asked for but Apple MPS is not available")
    if device not in ("cpu", "mps") and not device.startswith("cuda"):
        raise PerturbStudioError(f"unknown device {device!r}; use auto, cpu, cuda or mps")
    return device


def device_info(device: str = "auto") -> dict:
    """What the engine will run on, for the GUI's status bar and Help > About."""
    import torch

    kind = resolve_device(device)
    if kind.startswith("cuda"):
        name = torch.cuda.get_device_name(torch.device(kind))
    elif kind == "mps":
        name = "Apple GPU (MPS)"
    else:
        name = f"CPU ({torch.get_num_threads()} threads)"
    return {"kind": kind.split(":")[0], "name": name, "torch": torch.__version__}
