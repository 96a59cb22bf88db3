"""Counters the edge exposes on /metrics (Prometheus text format 0.0.4)."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class EdgeMetrics:
    connections_total: int = 0
    """Client connections accepted and relayed."""
    rejections_total: int = 0
    """Client connections reset because no grant covered the IP (or no agent)."""
    revocations_total: int = 0
    """Live connections reset because their grant went."""
    bytes_to_agent_total: int = 0
    """Bytes from clients relayed towards agents."""
    bytes_from_agent_total: int = 0
    """Bytes from agents relayed to clients."""
    protocol_errors_total: int = 0
    """Mux protocol errors (stream- or connection-scoped)."""
    listen_failures_total: int = 0
    """Failed attempts to bind a tunnel port (each retried with backoff)."""
    bad_changes_total: int = 0
    """Change-log rows the edge could not apply (each followed by a fresh snapshot)."""

    def render(
        self, gauges: dict[str, tuple[str, float]], live: dict[str, int] | None = None
    ) -> str:
        """``live`` adds what open streams have counted so far, so byte counters move
        while a long connection runs, not only when it closes."""
        lines: list[str] = []
        for f in fields(self):
            name = f"entryguard_edge_{f.name}"
            doc = f.name.removesuffix("_total").replace("_", " ")
            value = getattr(self, f.name) + (live or {}).get(f.name, 0)
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} counter", f"{name} {value}"]
        for g, (doc, value) in gauges.items():
            name = f"entryguard_edge_{g}"
            lines += [f"# HELP {name} {doc}", f"# TYPE {name} gauge", f"{name} {value:g}"]
        return "\n".join(lines) + "\n"
