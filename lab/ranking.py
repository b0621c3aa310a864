"""The method ranking ``videoqa eval`` writes under its per-configuration table (and docs/quality.md
shows): per mode, one row per method, between the bounds.

Each row: accuracy at every budget below 100%; the share of full-cache accuracy at the two
reference budgets (20% and 10% where the run has them); accuracy per needle quartile at 20% with
its spread (max − min, in points); and the share of evidence kept at the reference budgets. The
``oracle`` comes first and ``random`` last; the methods between are ranked by accuracy at the
first reference budget. Only one-shot, uncapped configurations are ranked (chunked and capped runs
keep their rows in the full table). A configuration under a reduction before the language model
(``evs@25%+das``, ``evs@25%`` alone) is its own row, placed at the share of the video's visual
tokens its cache keeps (:func:`kept_share`: its budget × the reduction's retention), so that
``evs@25%`` stands in the 25% column beside the KV methods that keep as many; the oracle and
random under a reduction are bounds too; a row with no share below 100% is left out.
"""

from __future__ import annotations

from collections import defaultdict

#: Budgets whose share of full is shown, and the one the needle quartiles are read at.
REFERENCE_BUDGETS = (0.2, 0.1)
BOUNDS_FIRST = ("oracle",)
BOUNDS_LAST = ("random",)


def _number(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def kept_share(config: dict) -> float:
    """The share of the video's visual tokens a configuration's cache keeps: its budget (of the
    tokens the language model sees) × its reduction's retention (1 without one)."""
    return round(config["budget"] * config.get("retention", 1.0), 6)


def ranking(summary: dict, buckets: tuple[str, ...]) -> str:
    """Markdown: one table per mode that has a ``full`` row, or "" when none has (``summary`` is
    :func:`videoqa.lab.harness.summarize`'s)."""
    by_mode: dict[str, dict[str, dict[float, dict]]] = defaultdict(lambda: defaultdict(dict))
    for config in summary["configs"]:
        if config.get("chunk_frames", 0) or config.get("max_visual_tokens", 0):
            continue
        by_mode[config["mode"]][config["method"]][kept_share(config)] = config
    parts = [_mode_table(mode, methods, buckets) for mode, methods in sorted(by_mode.items()) if "full" in methods]
    return "\n".join(p for p in parts if p)


def _mode_table(mode: str, methods: dict[str, dict[float, dict]], buckets: tuple[str, ...]) -> str:
    full = methods["full"]
    full_accuracy = full[max(full)]["accuracy"]
    budgets = sorted({b for m, rows in methods.items() if m != "full" for b in rows if b < 1.0}, reverse=True)
    if not budgets:
        return ""
    references = [b for b in REFERENCE_BUDGETS if b in budgets] or budgets[:1]
    lead = references[0]

    def order(method: str) -> tuple[int, float]:
        kv_method = method.rpartition("+")[2]  # under a reduction too: ``evs@25%+oracle`` is a bound
        group = 0 if kv_method in BOUNDS_FIRST else 2 if kv_method in BOUNDS_LAST else 1
        at = methods[method].get(lead)
        return group, -(at["accuracy"] if at else -1.0)

    refs = " / ".join(f"@{b:.0%}" for b in references)
    header = ["method", *(f"{b:.0%}" for b in budgets), f"% of full {refs}"]
    header += [f"needle quartiles @{lead:.0%} (spread)", f"evidence kept {refs}"]
    lines = [
        f"**{mode}**, full cache {full_accuracy:.3f}:",
        "",
        "| " + " | ".join(header) + " |",
        "|---" * len(header) + "|",
    ]
    ranked = [m for m in methods if m != "full" and any(b < 1.0 for b in methods[m])]
    for method in sorted(ranked, key=order):
        rows = methods[method]
        cells = [_number(rows[b]["accuracy"], 3) if b in rows else "—" for b in budgets]
        shares = " / ".join(
            f"{rows[b]['accuracy'] / full_accuracy:.0%}" if b in rows and full_accuracy else "—" for b in references
        )
        quartiles = _quartiles(rows.get(lead), buckets)
        kept = " / ".join(_number(rows[b].get("evidence_kept")) if b in rows else "—" for b in references)
        name = f"**{method}**" if method == "das" else method
        lines.append(f"| {name} | " + " | ".join([*cells, shares, quartiles, kept]) + " |")
    return "\n".join(lines) + "\n"


def _quartiles(config: dict | None, buckets: tuple[str, ...]) -> str:
    if not config or not config.get("needle_buckets"):
        return "—"
    values = [config["needle_buckets"].get(b) for b in buckets]
    present = [v for v in values if v is not None]
    spread = round(100 * (max(present) - min(present)))
    return " / ".join(_number(v) for v in values) + f" ({spread})"
