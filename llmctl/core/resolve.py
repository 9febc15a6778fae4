"""Turn what a person typed (`llmctl switch qwen3`) into one model id, or explain why not.

Order: exact id, then an exact alias (a model's `aliases`), then case-insensitive id, name or
alias, then substring of ids/names (one hit wins, several are ambiguous), the same ignoring
punctuation, then rapidfuzz similarity: a clear winner wins, a close race is ambiguous, nothing
close enough is "not found" with the nearest ids as suggestions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ACCEPT = 80.0  # similarity a fuzzy winner needs
MARGIN = 8.0  # lead over the runner-up that makes a winner clear
SUGGEST = 40.0


@dataclass
class Resolution:
    kind: str  # "match" | "ambiguous" | "not_found"
    model: str | None = None
    candidates: list[str] = field(default_factory=list)


def _squash(text: str) -> str:
    """Lower-case letters and digits only, so `qwen35` finds `qwen3.5-35b`."""
    return "".join(c for c in text.casefold() if c.isalnum())


def resolve(query: str, models: dict[str, str],
            aliases: dict[str, str] | None = None) -> Resolution:
    """`models` maps id -> display name; `aliases` maps alias -> id."""
    q = query.strip()
    if q in models:
        return Resolution("match", q)
    aliases = aliases or {}
    if aliases.get(q) in models:
        return Resolution("match", aliases[q])
    low = q.casefold()
    exact = [m for m, name in models.items() if low in (m.casefold(), name.casefold())]
    exact += [m for a, m in aliases.items() if a.casefold() == low and m in models
              and m not in exact]
    if len(exact) == 1:
        return Resolution("match", exact[0])
    contains = [m for m, name in models.items() if low in m.casefold() or low in name.casefold()]
    if len(contains) == 1:
        return Resolution("match", contains[0])
    if contains:
        return Resolution("ambiguous", candidates=sorted(contains))
    squashed = _squash(q)
    loose = [m for m, name in models.items() if squashed and (
        squashed in _squash(m) or squashed in _squash(name))]
    if len(loose) == 1:
        return Resolution("match", loose[0])
    if loose:
        return Resolution("ambiguous", candidates=sorted(loose))
    # imported here: rapidfuzz's compiled modules are ~2 MB of memory that the daemon's
    # workers (which resolve every request's model name) should not hold for typos alone
    from rapidfuzz import fuzz, process

    choices = {m: f"{m} {name}" for m, name in models.items()}
    scored = process.extract(q, choices, scorer=fuzz.WRatio, processor=str.casefold,
                             limit=len(choices))
    ranked = [(key, score) for _, score, key in scored]
    if ranked and ranked[0][1] >= ACCEPT:
        close = [m for m, s in ranked if s >= ranked[0][1] - MARGIN]
        if len(close) == 1:
            return Resolution("match", close[0])
        return Resolution("ambiguous", candidates=close)
    return Resolution("not_found", candidates=[m for m, s in ranked[:3] if s >= SUGGEST])
