"""ipywidgets of universal-kernel: the runtime monitor and the streaming generation display.

Imported lazily, so that `%load_ext universal_kernel` does not import ipywidgets.
"""

__all__ = ["Monitor", "StreamDisplay", "sparkline"]


def __getattr__(name):
    if name in ("Monitor", "sparkline"):
        from . import monitor

        return getattr(monitor, name)
    if name == "StreamDisplay":
        from .stream_display import StreamDisplay

        return StreamDisplay
    raise AttributeError(name)
