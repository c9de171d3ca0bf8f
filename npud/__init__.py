"""npud: a local daemon for small, bounded LLM jobs on an Intel NPU through OpenVINO GenAI."""

from npuclient._version import __version__

__all__ = ["__version__"]
