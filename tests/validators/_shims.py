"""Make Megatron-LM's and DeepSpeed's validators importable on a CPU-only Python 3.11 machine.

* ``typing.override`` (Python 3.12) for Megatron-Core 0.19 wheels;
* an import-time stand-in for ``triton`` (Megatron imports kernels at module level; the validators never
  launch one), registered after torch has decided triton is absent;
* the GPU Megatron probes (``get_device_capability`` / ``get_device_properties``) answers for the target
  GPU family, so architecture-dependent checks (e.g. CUDA_DEVICE_MAX_CONNECTIONS before Blackwell) run
  as on the real cluster.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types
import typing

CAPABILITY = {"ampere": (8, 0), "hopper": (9, 0), "blackwell": (10, 0)}


def install(family: str) -> None:
    if not hasattr(typing, "override"):
        typing.override = lambda f: f  # type: ignore[attr-defined]
    import torch
    import torch.utils._triton as _t

    _t.has_triton()  # torch caches "no triton" before the stand-in exists
    major, minor = CAPABILITY[family]

    class _Props:
        name = f"simulated {family} GPU"
        total_memory = 80 * 2**30
        multi_processor_count = 132

    _Props.major, _Props.minor = major, minor
    _STATE["props"] = _Props
    torch.cuda.get_device_properties = lambda *a, **k: _STATE["props"]()  # type: ignore[assignment]
    torch.cuda.get_device_capability = lambda *a, **k: (_STATE["props"].major, _STATE["props"].minor)  # type: ignore[assignment]
    sys.meta_path.insert(0, _TritonFinder())


def set_family(family: str) -> None:
    """Answer the GPU probes for another family (several folders checked in one process)."""
    _STATE["props"].major, _STATE["props"].minor = CAPABILITY[family]


_STATE: dict[str, type] = {}


class _Any:
    def __init__(self, *a: object, **k: object) -> None:
        pass

    def __call__(self, *a: object, **k: object) -> object:
        if len(a) == 1 and callable(a[0]) and not k:
            return a[0]
        return _Any()

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Any()

    def __getitem__(self, item: object) -> object:
        return _Any()


class _Module(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        if name.lstrip("_")[:1].isupper():  # class names must be real types for isinstance()
            cls = type(name, (), {"__init__": lambda self, *a, **k: None})
            setattr(self, name, cls)
            return cls
        return _Any()


class _TritonFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):  # type: ignore[no-untyped-def]
        if name == "triton" or name.startswith("triton."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        module = _Module(spec.name)
        module.__path__ = []  # type: ignore[attr-defined]
        module.__version__ = "3.0.0"  # type: ignore[attr-defined]
        return module

    def exec_module(self, module):  # type: ignore[no-untyped-def]
        return None
