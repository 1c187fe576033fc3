"""What ``raylora curate`` prints: the counts, a table of drop reasons with what each means and one example."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pipelines.curate.raydata import scan
from pipelines.curate.reasons import REASONS


def drop_examples(dropped_files: list[str]) -> dict[str, str]:
    """One example per drop reason, for the report: the user's id (else the row's key) and the detail."""
    examples: dict[str, str] = {}
    for table in scan(dropped_files, ["id", "user_id", "reason", "detail"]):
        for key, user_id, reason, detail in zip(*(table.column(i).to_pylist() for i in range(4)), strict=True):
            examples.setdefault(reason, f"{user_id or key}" + (f" ({detail})" if detail else ""))
    return examples


def format_report(read: int, kept: int, dropped_by_reason: dict[str, int], examples: dict[str, str],
                  repeated_user_ids: dict[str, Any] | None = None) -> str:
    """The human summary: counts, a table of drop reasons with what each means and one example, and the
    user ids that more than one row carries."""
    lines = [f"curated {read} rows: kept {kept}, dropped {read - kept}",
             f"  {'reason':<16} {'count':>7}  {'meaning':<50}  example"]
    for reason, count in sorted(dropped_by_reason.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  {reason:<16} {count:>7}  {REASONS[reason]:<50}  {examples.get(reason, '')[:70]}".rstrip())
    if repeated_user_ids and repeated_user_ids["ids"]:
        shown = ", ".join(f"{user_id!r} x{n}" for user_id, n in repeated_user_ids["examples"].items())
        lines.append(f"note: {repeated_user_ids['ids']} ids are on more than one row ({repeated_user_ids['rows']} "
                     f"rows; e.g. {shown}); every row is kept apart by its key <file>:<line>, and dedup compares "
                     "content, not ids")
    return "\n".join(lines)


def source_warnings(per_source: dict[str, dict[str, int]], dropped: Mapping[tuple[str, ...], int]) -> list[str]:
    """One line for each source that gave nothing: empty, or every row dropped (its commonest reason named)."""
    lines = []
    for source, counts in per_source.items():
        if counts["read"] == 0:
            lines.append(f"warning: source {source} holds no rows: check its data.sources[].path")
        elif counts["kept"] == 0:
            reason = max(((n, r) for (src, r), n in dropped.items() if src == source), default=(0, "?"))[1]
            lines.append(f"warning: source {source}: all {counts['read']} rows were dropped, most as {reason}: "
                         "check the file and its data.sources[].format")
    return lines
