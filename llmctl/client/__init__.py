"""Client side of llmctld's control API (shared by the CLI and scripts)."""
