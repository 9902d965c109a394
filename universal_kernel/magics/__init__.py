"""IPython magics: `%%generate`, `%embed` and `%runtime` (`%load_ext universal_kernel`)."""

from __future__ import annotations


def register(ipython):
    """Register the magics on `ipython`; returns the magics instance (one per shell)."""
    from .core import UniversalKernelMagics

    existing = get_magics(ipython)
    if existing is not None:
        return existing
    magics = UniversalKernelMagics(shell=ipython)
    ipython.register_magics(magics)
    return magics


def get_magics(ipython):
    """The registered `UniversalKernelMagics` of a shell, or None."""
    return ipython.magics_manager.registry.get("UniversalKernelMagics")


__all__ = ["get_magics", "register"]
