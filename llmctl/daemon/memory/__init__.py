"""What a model needs in memory with the exact flags llmctld would launch it with, what is free
now, and the decision to refuse a load that cannot fit — before anything is spawned.

- needs.py          the figures: per device and the host, weights / context / compute, in MiB
- fit_params.py     llama.cpp's own estimator, `llama-fit-params`, run beside llama-server
- gguf_estimate.py  the fallback when there is none: weights and KV from the GGUF header
- estimator.py      which of the two, for one launch, cached on disk by fingerprint
- free.py           free host RAM (psutil) and device memory (NVML, through observe/gpu.py)
- check.py          need against free: the verdict, what would fit, the message
- preload.py        the lifecycle worker's one call before a load (backend/loading.py)
- listing.py        the proxy worker's view for listings, filled in the background

Nothing here spawns llama-server or stops one; the lifecycle worker does, after asking.
"""
