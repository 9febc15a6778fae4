"""llmctl: one local GGUF model at a time behind a stable OpenAI-compatible endpoint."""

__version__ = "0.1.0"
