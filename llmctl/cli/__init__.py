"""The `llmctl` command line. Kept light: it imports requests and nothing heavy, so a
`llmctl status` costs little more than Python starting and importing requests."""
