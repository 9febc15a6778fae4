"""llmctl.daemon.memory without a daemon: the estimator's argv, the decision and its words,
the cache of records, free memory with the real nvidia-ml-py on this GPU-less machine.
(The real llama-fit-params runs in tests/integration/test_memory_fit.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llmctl.cli.render import memory_cell, memory_lines
from llmctl.daemon.memory import estimator as estimator_module
from llmctl.daemon.memory import fit_params, gguf_estimate
from llmctl.daemon.memory.check import (
    Budget,
    advice,
    cache_allowance,
    context_that_fits,
    decide,
    describe,
    fields,
)
from llmctl.daemon.memory.estimator import Estimator, Launch
from llmctl.daemon.memory.free import Free, FreeMemory, released_by
from llmctl.daemon.memory.needs import ESTIMATE, FIT_PARAMS, HOST, Needs, Part
from llmctl.daemon.memory.preload import PreloadCheck
from llmctl.daemon.observe.gpu import GpuProbe

from tinymodel import write_big_llama, write_tiny_llama

SERVER_ARGV = [
    "/opt/llama/llama-server", "-m", "/m/model.gguf", "--host", "127.0.0.1", "--port", "11435",
    "--alias", "big", "-fa", "auto", "-ngl", "999", "-c", "0", "-ctk", "q8_0", "-ctv", "q8_0",
    "-np", "1", "--load-mode", "none", "--metrics", "--slots", "--reasoning-format", "deepseek",
    "--no-ui", "--cache-ram", "-1", "--no-jinja", "--chat-template", "gemma", "--swa-full"]
# what llama-fit-params b11434's --help lists among those (the rest it refuses)
ACCEPTED = frozenset({"-m", "-fa", "-ngl", "-c", "-ctk", "-ctv", "-np", "--load-mode",
                      "--swa-full", "--fit-print"})


def test_the_estimator_gets_only_the_flags_it_takes_each_with_its_values() -> None:
    argv = fit_params.fit_argv(Path("/opt/llama/llama-fit-params"), SERVER_ARGV, ACCEPTED)
    assert argv == ["/opt/llama/llama-fit-params", "-m", "/m/model.gguf", "-fa", "auto",
                    "-ngl", "999", "-c", "0", "-ctk", "q8_0", "-ctv", "q8_0", "-np", "1",
                    "--load-mode", "none", "--swa-full"]
    # -1 is a value, not a flag: --cache-ram goes with it
    assert ["--cache-ram", "-1"] in fit_params.groups(SERVER_ARGV[1:])


def test_a_suggestion_run_leaves_out_what_it_should_choose() -> None:
    argv = fit_params.fit_argv(Path("/x/llama-fit-params"), SERVER_ARGV, ACCEPTED,
                               fit_params.CONTEXT_FLAGS + fit_params.LAYER_FLAGS)
    assert "-c" not in argv and "-ngl" not in argv and "999" not in argv


def test_only_a_fit_params_beside_the_server_counts(tmp_path: Path) -> None:
    (tmp_path / "build").mkdir()
    server = tmp_path / "build" / "llama-server"
    server.write_text("#!/bin/sh\n")
    assert fit_params.find(server) is None
    tool = tmp_path / "build" / "llama-fit-params"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    assert fit_params.find(server) == tool
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "llama-server").symlink_to(server)  # a link on PATH to a build
    assert fit_params.find(tmp_path / "bin" / "llama-server") == tool


def needs(weights: int, context: int, compute: int, ctx: int = 2048,
          devices: dict[str, Part] | None = None) -> Needs:
    return Needs(FIT_PARAMS, {HOST: Part(weights, context, compute), **(devices or {})}, ctx)


def budget(host: int, *, margin: int = 1024, cache_ram: int = 8192, released: int = 0,
           devices: dict[str, int] | None = None) -> Budget:
    return Budget(Free(host, devices or {}), margin, cache_ram, released)


def test_the_prompt_cache_allowance_follows_llama_servers_bounds() -> None:
    big = needs(42, 26112, 1025, ctx=1048576)
    assert cache_allowance(8192, big) == 8192  # a byte bound
    assert cache_allowance(-1, big) == 26112  # "no limit" still keeps at most n_ctx tokens
    assert cache_allowance(0, big) == 0


def test_host_need_counts_the_prompt_cache_and_the_margin_and_what_is_replaced() -> None:
    small = needs(42, 51, 3)
    assert decide(small, budget(10_000)).fits  # 96 + 8192 cache <= 10000 - 1024
    verdict = decide(small, budget(9_000))
    assert not verdict.fits and verdict.short == (HOST,)
    assert verdict.need_host == 96 + 8192 and verdict.available_host == 9_000 - 1024
    assert decide(small, budget(9_000, released=500)).fits  # the running model goes
    assert decide(small, budget(2_000, cache_ram=0)).fits


def test_devices_are_judged_when_their_free_memory_is_known() -> None:
    offloaded = needs(10, 10, 10, devices={"CUDA0": Part(7000, 900, 300)})
    tight = decide(offloaded, budget(64_000, cache_ram=0, devices={"CUDA0": 8000}))
    assert not tight.fits and tight.short == ("CUDA0",)
    assert decide(offloaded, budget(64_000, cache_ram=0, devices={"CUDA0": 9500})).fits
    # a device llmctl cannot read (no NVML for it) is not judged
    unknown = decide(offloaded, budget(64_000, cache_ram=0))
    assert unknown.fits and unknown.devices["CUDA0"] == (8200, None)


def test_the_context_that_fits_is_the_largest_rounded_one() -> None:
    big = needs(42, 26112, 1025, ctx=1048576)  # 0.0249 MiB per token (q8_0)
    room = budget(12_000, margin=1024, cache_ram=0)
    ctx = context_that_fits(big, room)
    assert ctx is not None and ctx % 1024 == 0
    per_token = 26112 / 1048576
    assert (42 + 1025 + per_token * ctx) <= 12_000 - 1024 < (42 + 1025 + per_token *
                                                              (ctx + 2048))
    assert context_that_fits(big, budget(1_500, margin=1024, cache_ram=0)) is None


def test_the_refusal_says_what_it_needs_what_is_free_and_what_would_fit() -> None:
    big = needs(42, 26112, 1025, ctx=1048576)
    verdict = decide(big, budget(22_000, released=5))
    text = describe("big", big, verdict) + "." + advice("big", {"-c": 417792})
    assert text.startswith("big needs 34.5 GiB of RAM with -c 1048576 (42 MiB weights, "
                           "25.5 GiB context, 1.0 GiB compute, up to 8.0 GiB of prompt cache "
                           "(llama.cache_ram)); 20.5 GiB is available (21.5 GiB free + 5 MiB "
                           "from the model it replaces, less 1.0 GiB kept free: "
                           "daemon.memory_margin).")
    assert "It would fit with -c 417792: `llmctl switch big --fit` loads it so" in text
    assert "`--no-fit-check` loads it as configured anyway" in text
    assert "No smaller context fits either" in advice("big", None)


def test_a_labelled_estimate_says_so_in_the_refusal() -> None:
    estimate = Needs(ESTIMATE, {HOST: Part(42, 26112, 1026)}, 1048576)
    assert "(estimated from the GGUF)" in describe("big", estimate,
                                                   decide(estimate, budget(8000)))


def test_nvidia_ml_py_on_this_machine_reports_no_device_and_does_not_fail() -> None:
    """The real pynvml: here its library is missing (no driver), which means no GPU."""
    import pynvml

    with pytest.raises(pynvml.NVMLError):
        pynvml.nvmlInit()
    free = FreeMemory(GpuProbe(rocm_smi=None)).now()
    assert free.devices == {} and free.host > 0


def test_a_probe_that_reads_a_gpu_names_it_as_llama_cpp_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("llmctl.daemon.observe.gpu.shutil.which", lambda name: None)

    class Nvml:
        def nvmlInit(self) -> None: ...
        def nvmlDeviceGetCount(self) -> int: return 2
        def nvmlDeviceGetHandleByIndex(self, i: int) -> int: return i
        def nvmlDeviceGetName(self, h: int) -> bytes: return b"RTX"
        def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
            return type("M", (), {"used": (h + 1) * 2**30, "total": 24 * 2**30})()

    probe = GpuProbe(load_nvml=Nvml)
    assert FreeMemory(probe).devices() == {"CUDA0": 23 * 1024, "CUDA1": 22 * 1024}


def test_what_a_stopped_process_gives_back_is_its_anonymous_memory() -> None:
    import os

    assert 0 < released_by(os.getpid()) < 4096
    assert released_by(None) == 0 and released_by(2**22 + 12345) == 0


# --- the cache of records ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_big_llama(tmp_path_factory.mktemp("gguf") / "big.gguf")


def test_the_gguf_estimate_follows_the_kv_arithmetic(big: Path) -> None:
    at = gguf_estimate.estimate(["llama-server", "-m", str(big), "-c", "2048", "-ctk", "f16",
                                 "-ctv", "f16"], [big])
    assert at.source == ESTIMATE and at.parts[HOST].context == 96  # 2 x 96 x 128 x 2048 x 2 B
    assert at.parts[HOST].weights == 42
    quantized = gguf_estimate.estimate(["llama-server", "-m", str(big), "-c", "1048576",
                                        "-ctk", "q8_0", "-ctv", "q8_0"], [big])
    assert quantized.parts[HOST].context == 26112 and quantized.parts[HOST].compute == 1026


def test_a_record_is_computed_once_and_read_back_by_another_estimator(tmp_path: Path) -> None:
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    launch = Launch("tiny", ["/nowhere/llama-server", "-m", str(model), "-c", "512"], [model],
                    ctx_size=512)
    first = Estimator(tmp_path / "cache")
    assert first.cached(launch) is None
    record = first.get(launch)  # no llama-fit-params beside /nowhere: the GGUF estimate
    assert record.needs is not None and record.needs.source == ESTIMATE
    files = list((tmp_path / "cache").glob("*.json"))
    assert [f.stem for f in files] == [record.key]
    again = Estimator(tmp_path / "cache").cached(launch)
    assert again is not None and again.needs == record.needs
    changed = Launch("tiny", [*launch.argv[:-1], "1024"], [model], ctx_size=1024)
    assert first.key(changed)[0] != record.key


def test_a_failed_estimate_is_kept_with_its_reason(tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a model" * 10)
    record = Estimator(tmp_path / "cache").get(Launch("junk", ["/x/llama-server"], [junk]))
    assert record.needs is None and "GGUF" in (record.error or "")
    assert json.loads((tmp_path / "cache" / f"{record.key}.json").read_text())["error"]


def test_the_cache_directory_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(estimator_module, "MAX_FILES", 8)
    model = write_tiny_llama(tmp_path / "tiny.gguf")
    cache = Estimator(tmp_path / "cache")
    for ctx in range(512, 512 + 10 * 256, 256):
        cache.get(Launch("tiny", ["/x/llama-server", "-m", str(model), "-c", str(ctx)],
                         [model], ctx_size=ctx))
    assert len(list((tmp_path / "cache").glob("*.json"))) <= 8


# --- the check before a load -----------------------------------------------------------------


class Caps:
    def has(self, flag: str) -> bool:
        return False  # a build without --cache-ram: no prompt cache to count


def model_cfg(ctx: int) -> dict[str, Any]:
    return {"llama": {"ctx_size": ctx, "gpu_layers": 999, "cache_ram": 8192},
            "daemon": {"memory_margin": 1024}}


class Entry:
    def __init__(self, path: Path):
        self.shards: list[Path] = []
        self.model_path = path
        self.facts = {"context_length": 2048}


def test_fit_loads_what_fits_and_is_remembered_until_no_fit_check(big: Path,
                                                                   tmp_path: Path) -> None:
    def rebuild(cfg: dict[str, Any]) -> list[str]:
        return ["/nowhere/llama-server", "-m", str(big), "-c", str(cfg["llama"]["ctx_size"]),
                "-ctk", "q8_0", "-ctv", "q8_0"]

    class Roomy(FreeMemory):
        def now(self) -> Free:
            return Free(4096)  # 3 GiB above the margin: about 80k tokens of this model

    check = PreloadCheck(tmp_path / "cache", Roomy(GpuProbe(load_nvml=lambda: None)))
    configured = rebuild(model_cfg(1048576))

    def admit(argv: list[str], running: list[str] | None = None, **flags: bool) -> Any:
        return check.admit("big", model_cfg(1048576), Entry(big), argv,
                           (2**22 + 1, running) if running else None, Caps(), rebuild, **flags)

    refused = admit(configured)
    assert refused.argv is None and refused.memory["fits"] is False
    suggested = refused.memory["suggested"]["-c"]
    assert 4096 < suggested < 1048576 and f"-c {suggested}" in (refused.refusal or "")
    fitted = admit(configured, fit=True)
    assert fitted.argv == rebuild(model_cfg(suggested))
    assert fitted.fitted == {"ctx_size": suggested, "configured": 1048576, "gpu_layers": 999,
                             "flags": {"-c": suggested}}
    # a wake, a routed request or a plain switch gets the fitted launch, and says so
    again = admit(configured)
    assert again.argv == fitted.argv and again.fitted == fitted.fitted
    assert admit(configured, running=fitted.argv).argv == fitted.argv  # already running
    assert admit(configured, check=False).argv == configured  # --no-fit-check: as configured
    assert admit(configured).argv is None  # ...and the fit is forgotten


# --- how the CLI shows it ---------------------------------------------------------------------


def test_models_and_inspect_show_the_memory() -> None:
    big = needs(42, 26112, 1025, ctx=1048576)
    memory = fields(big, decide(big, budget(22_000)))
    assert memory_cell(memory) == "26.5 GiB !"
    assert memory_cell({"state": "pending"}) == "…" and memory_cell(None) == "-"
    lines = memory_lines(memory)
    assert lines[0] == "memory   26.5 GiB on the host with -c 1048576 (llama-fit-params)"
    assert lines[1] == ("         weights 42.0 MiB, context 25.5 GiB, compute 1.0 GiB; and up "
                        "to 8.0 GiB of prompt cache (llama.cache_ram)")
    assert lines[2].startswith("         DOES NOT FIT (Host): 34.5 GiB needed on the host, "
                               "20.5 GiB available (21.5 GiB free, 1.0 GiB kept free")
    tiny = needs(0, 0, 3)
    assert memory_lines(fields(tiny, decide(tiny, budget(22_000))))[1].startswith(
        "         weights <1 MiB, context <1 MiB, compute 3.0 MiB")


def test_without_an_nvidia_driver_pynvml_is_not_even_imported(monkeypatch) -> None:
    """~2 MB in each process that reads GPU memory, for an nvmlInit() that must fail."""
    import sys

    from llmctl.daemon.observe import gpu

    monkeypatch.setattr(gpu, "DRIVER_PATHS", ("/nonexistent/nvidia",))
    monkeypatch.setattr(gpu.sys, "platform", "linux")
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(gpu.shutil, "which", lambda name: None)
    assert GpuProbe().read() == []
    assert "pynvml" not in sys.modules
