"""The Jupyter server extension of universal-kernel: the OpenAI API on the Jupyter server's own port.

Clients use `http://HOST:PORT{base_url}universal/v1` with the Jupyter token as their API key.
"""

from .app import UniversalKernelApp

__all__ = ["UniversalKernelApp"]


def _jupyter_server_extension_points():
    return [{"module": "universal_kernel.server_ext", "app": UniversalKernelApp}]
