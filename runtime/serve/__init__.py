"""`kiln serve`: compiled models behind HTTP, speaking the KServe v2 / Open Inference Protocol."""

from .server import ServeOptions, Server, read_token, serve

__all__ = ["ServeOptions", "Server", "read_token", "serve"]
