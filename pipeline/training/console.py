"""The training stage's last line: which epoch(s) it kept and where the run went."""

from __future__ import annotations

from typing import Any


def kept(summary: dict[str, Any]) -> str:
    """The kept epoch(s) and the validation score, for the stage's last line."""
    epochs = []  # a seed ensemble's members, in order (member1_best_epoch, member2_...)
    while f"member{len(epochs) + 1}_best_epoch" in summary:
        epochs.append(str(summary[f"member{len(epochs) + 1}_best_epoch"]))
    kept_epochs = (
        f"best epochs {', '.join(epochs)} ({len(epochs)} members averaged)"
        if epochs
        else f"best epoch {summary['best_epoch']}"
    )
    return f"{kept_epochs}, val balanced accuracy {summary['best_val_balanced_accuracy']:.4f}"


def outcome(summary: dict[str, Any]) -> str:
    """Where the run went, for the stage's last line."""
    if summary.get("group_process"):
        return f"{summary['group_process']}: done, process 0 writes the outputs and logs the run"
    if summary.get("offline_bundle"):
        return f"recorded offline in {summary['offline_bundle']} (log it: python -m pipeline.tracking.bundle import <that folder>)"
    return f"registered {summary['registered_model']} v{summary['version']}"
