"""``specc serve``: exported models behind the open inference protocol (KServe v2), with dynamic
batching and Prometheus metrics. Imports neither torch nor training code.

>>> from specc.serve import ServeOptions, serve
>>> serve(["lenet.onnx"], ServeOptions(port=8000))     # blocks until SIGTERM / Ctrl-C

:mod:`specc.serve.protocol` decodes and encodes the protocol, :mod:`specc.serve.batching` merges
concurrent requests, :mod:`specc.serve.app` is the ASGI application, :mod:`specc.serve.server` runs it.
"""

from __future__ import annotations

from specc.serve.app import ServeSettings, create_app
from specc.serve.protocol import Limits
from specc.serve.server import ServeOptions, serve

__all__ = ["Limits", "ServeOptions", "ServeSettings", "create_app", "serve"]
