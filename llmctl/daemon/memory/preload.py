"""The check before a load: backend/loading.py calls `PreloadCheck.admit` once per switch,
after building llama-server's argv and before it stops what runs or spawns anything. Every
load goes through there (an explicit switch, the default model on a first request, the wake
after an idle unload, a request routed by model name), so each is judged the same way.

The figures come from the estimator's cache (the proxy worker fills it in the background for
listings) or, when a launch has none yet, from one run now: tens of milliseconds for small
models, half a second for the starter, bounded by fit_params.TIMEOUT. When there is no answer
(the estimator failed), the load goes ahead: the check is llama.cpp's best effort, not a
reason to refuse what might fit.

A launch that does not fit is refused with what it needs, what is free and what would fit (a
smaller -c checked with one more run, and on a GPU the -c/-ngl llama-fit-params picks).
`fit` (`llmctl switch --fit`) loads that instead, and remembers it for this configured argv
while the lifecycle worker lives: a wake, a routed request or a plain switch to the model then
gets the fitted launch (the user asked once; a changed config is a new argv and asks again).
`check=False` (`--no-fit-check`) loads as configured and forgets that.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmctl.daemon.memory import fit_params
from llmctl.daemon.memory.check import (
    Budget,
    advice,
    budget_for,
    context_that_fits,
    decide,
    describe,
    fields,
)
from llmctl.daemon.memory.estimator import Estimator, Launch
from llmctl.daemon.memory.free import FreeMemory, released_by
from llmctl.daemon.memory.needs import Needs

log = logging.getLogger("llmctld.memory")

SHRINK_TRIES = 3  # runs spent checking a smaller context before offering none
Rebuild = Callable[[dict[str, Any]], list[str]]  # a model config -> llama-server's argv


@dataclass(frozen=True)
class Admission:
    argv: list[str] | None  # what to launch; None: refused
    refusal: str | None = None
    memory: dict[str, Any] | None = None  # the figures, for the refusal's reply
    fitted: dict[str, Any] | None = None  # {"ctx_size", "configured", ...} after --fit


@dataclass(frozen=True)
class Fit:
    """A smaller launch that fits, checked with the estimator."""

    flags: dict[str, int]  # what changed, as llama-server flags: {"-c": 417792, ...}
    cfg: dict[str, Any]
    argv: list[str]
    needs: Needs

    def describe(self, configured_ctx: int | None) -> dict[str, Any]:
        return {"ctx_size": self.cfg["llama"]["ctx_size"], "configured": configured_ctx,
                "gpu_layers": self.cfg["llama"]["gpu_layers"], "flags": self.flags}


class PreloadCheck:
    def __init__(self, cache_dir: Path, free: FreeMemory | None = None):
        self.estimator = Estimator(cache_dir)
        self.free = free or FreeMemory()
        # configured argv -> the fit `--fit` loaded instead, and what it told
        self.fitted: dict[tuple[str, ...], tuple[Fit, dict[str, Any]]] = {}
        self._launched: dict[tuple[str, ...], Needs] = {}  # what the running one needs

    def admit(self, model: str, cfg: dict[str, Any], entry: Any, argv: list[str],
              running: tuple[int, list[str]] | None, caps: Any, rebuild: Rebuild, *,
              check: bool = True, fit: bool = False) -> Admission:
        """`running`: the pid and argv of the llama-server this load replaces."""
        configured = tuple(argv)
        if not check:
            self.fitted.pop(configured, None)
            return Admission(argv)
        remembered = None if fit else self.fitted.get(configured)
        if remembered is not None:
            cfg, argv = remembered[0].cfg, remembered[0].argv
        if running is not None and running[1] == argv:
            return Admission(argv)  # it runs already: nothing is loaded
        launch = Launch.of(model, cfg, entry, argv)
        record = self.estimator.get(launch)
        if record.needs is None:
            log.warning("loading %s without a memory check: %s", model, record.error)
            return Admission(argv)
        budget = self._budget(cfg, caps, running)
        verdict = decide(record.needs, budget)
        if verdict.fits:
            self._launched = {tuple(argv): record.needs}
            if fit:
                self.fitted.pop(configured, None)  # it fits as configured now
            return Admission(argv, fitted=remembered[1] if remembered else None)
        smaller = self._smaller(launch, record.needs, budget, cfg, rebuild)
        if fit and smaller is not None:
            told = smaller.describe(launch.ctx_size)
            self.fitted[configured] = (smaller, told)
            self._launched = {tuple(smaller.argv): smaller.needs}
            log.info("%s does not fit as configured; loading it with %s (--fit)", model,
                     smaller.flags)
            return Admission(smaller.argv, fitted=told)
        flags = smaller.flags if smaller else None
        message = describe(model, record.needs, verdict) + "." + advice(model, flags)
        return Admission(None, message, {**fields(record.needs, verdict), "suggested": flags})

    def _budget(self, cfg: dict[str, Any], caps: Any, running: tuple[int, list[str]] | None,
                ) -> Budget:
        replaced = self._launched.get(tuple(running[1])) if running else None
        return budget_for(cfg, caps, self.free.now(),
                          released_by(running[0] if running else None),
                          replaced.devices if replaced else {})

    def _smaller(self, launch: Launch, needs: Needs, budget: Budget, cfg: dict[str, Any],
                 rebuild: Rebuild) -> Fit | None:
        """The largest smaller context (and on a GPU the layers llama-fit-params picks) that
        fits, checked with the estimator: at most SHRINK_TRIES runs."""
        layers: int | None = None
        ctx = context_that_fits(needs, budget)
        if any(name in needs.devices for name in decide(needs, budget).short):
            picked = self._device_pick(launch)
            if picked is not None:
                ctx, layers = min(ctx or picked[0], picked[0]), picked[1]
        for _ in range(SHRINK_TRIES):
            if not ctx:
                break
            trial = copy.deepcopy(cfg)
            trial["llama"]["ctx_size"] = ctx
            if layers is not None:
                trial["llama"]["gpu_layers"] = layers
            argv = rebuild(trial)
            record = self.estimator.get(dataclasses.replace(launch, argv=argv, ctx_size=ctx))
            if record.needs is None:
                break
            if decide(record.needs, budget).fits:
                flags = {"-c": ctx} if layers is None else {"-c": ctx, "-ngl": layers}
                return Fit(flags, trial, argv, record.needs)
            ctx = ctx * 3 // 4 // 256 * 256
        return None

    def _device_pick(self, launch: Launch) -> tuple[int, int] | None:
        """llama-fit-params' own -c/-ngl for free device memory (without the -c and -ngl
        llmctl sets, which it would not change)."""
        tool = fit_params.find(Path(launch.argv[0]))
        if tool is None:
            return None
        try:
            argv = fit_params.fit_argv(tool, launch.argv, fit_params.accepted_flags(tool),
                                       fit_params.CONTEXT_FLAGS + fit_params.LAYER_FLAGS)
            picked = fit_params.suggest(argv, self.estimator.timeout)
        except (fit_params.FitError, OSError) as e:
            log.warning("llama-fit-params could not suggest a fit for %s: %s", launch.model, e)
            return None
        if not picked or not picked.get("-c", "").isdigit():
            return None
        layers = picked.get("-ngl", "")
        return int(picked["-c"]), int(layers) if layers.lstrip("-").isdigit() else 0
