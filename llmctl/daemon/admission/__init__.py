"""Who may use the backend, and when (the proxy worker decides: only it sees requests).
gate.py hands out leases and applies the busy rule to switches and stops; leases.py is the
record of what is busy; scheduler.py picks each request's model, starts the switches and
loads requests cause and the idle unload; model_queue.py is its fair, bounded queue and
idle.py its idle clock."""
