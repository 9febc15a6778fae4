"""How llmctld's processes talk: one socketpair per worker carrying length-framed JSON
(channel.py), typed message records (protocol.py), and the proxy worker's client that sends a
command and reads its events and reply (commands.py)."""
