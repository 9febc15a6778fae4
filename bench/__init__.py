"""llmctl's benchmark harness: direct llama-server vs llmctld vs nginx, one command.

See bench/README.md. Run with `.venv/bin/python -m bench [--quick]`.
"""
