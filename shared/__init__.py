"""What the agent and the coordinator both speak: messages, keys, package format."""

from typing import Any


def __getattr__(name: str) -> Any:
    # Looked up on first use: importlib.metadata costs ~35 ms of every CLI start-up.
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("careline")
        except PackageNotFoundError:  # a source tree that is not installed
            return "0.0.0+source"
    raise AttributeError(f"module 'careline.shared' has no attribute {name!r}")
