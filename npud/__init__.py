"""npud: a local daemon for small, bounded LLM jobs on an Intel NPU through OpenVINO GenAI."""

__version__ = "0.1.0"
