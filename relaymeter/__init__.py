"""relaymeter: self-hosted LLM gateway and usage console."""

__version__ = "0.1.0"
