"""What the agent and the coordinator both speak: messages, keys, package format."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("careline")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
