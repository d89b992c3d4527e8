"""The results table on stdout and the JSON file."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench.report")

# Share of the server's core used by anything but the server beyond which the numbers are suspect.
CONTENTION_WARNING = 0.15


def http_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rows = [
        f"HTTP heartbeats: {cfg['agents']} agents, {cfg['connections']} keep-alive connections, "
        f"{cfg['rounds']} x {cfg['duration']} s per target (closed loop, wrk)",
        f"{result['pinning']}",
        "",
        f"{'target':<10} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}",
    ]
    for name, summary in result["targets"].items():
        rows.append(
            f"{name:<10} {summary['requests_per_second']:>11,.0f} {summary['p50_ms']:>8.2f}"
            f" {summary['p99_ms']:>8.2f} {summary['errors']:>7}"
        )
    rounds = ", ".join(f"{r:.2f}" for r in result["round_ratios"])
    rows += [
        "",
        f"ratio gateway/baseline = {result['ratio']:.2f} (aim >= {result['aim']:.2f}); per round: {rounds}",
    ]
    if result["profile"]:
        rows += _profile_rows(result["profile"])
    rows += _warnings(result)
    return "\n".join(rows)


def ws_table(result: dict[str, Any]) -> str:
    cfg = result["config"]
    rows = [
        f"WebSocket heartbeats: {cfg['agents']} agents, one socket each, "
        f"{cfg['rounds']} x {cfg['duration']} s per target (closed loop, bench.ws_client on uvloop)",
        f"{result['pinning']}",
        "",
        f"{'target':<10} {'messages/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'server CPU':>11}"
        f" {'generator CPU':>14} {'server µs/msg':>14} {'generator µs/msg':>17}",
    ]
    for name, summary in result["targets"].items():
        rows.append(
            f"{name:<10} {summary['messages_per_second']:>11,.0f} {summary['p50_ms']:>8.2f}"
            f" {summary['p99_ms']:>8.2f} {summary['errors']:>7} {summary['server_cpu']:>11.0%}"
            f" {summary['generator_cpu']:>14.0%} {summary['server_us_per_message']:>14.1f}"
            f" {summary['generator_us_per_message']:>17.1f}"
        )
    rounds = ", ".join(f"{r:.2f}" for r in result["round_ratios"])
    ratio, aim = result["ratio"], result["aim"]
    rows += [
        "",
        f"ratio gateway/baseline = {ratio:.2f} (aim >= {aim:.2f}: {'met' if ratio >= aim else 'NOT met'});"
        f" per round: {rounds}",
        f"CPU per message baseline/gateway = {result['cpu_ratio']:.2f} (the same comparison by server CPU"
        " time per message; steadier on a shared machine)",
    ]
    memory = result["memory"]
    if memory:
        gateway, baseline = memory["gateway"], memory["baseline"]
        per_agent, memory_aim = gateway["kib_per_agent"], memory["aim_kib"]
        met = "met" if per_agent <= memory_aim else "NOT met"
        rows += [
            f"gateway RSS per idle agent = {per_agent:.1f} KiB (aim <= {memory_aim:.0f} KiB: {met}), "
            f"marginal {gateway['marginal_kib_per_agent']:.1f} KiB, with {gateway['agents']:,} sockets",
            f"baseline RSS per idle socket = {baseline['kib_per_agent']:.1f} KiB "
            f"(marginal {baseline['marginal_kib_per_agent']:.1f} KiB)",
        ]
    if result["profile"]:
        rows += _profile_rows(result["profile"])
    rows += _warnings(result)
    return "\n".join(rows)


def _warnings(result: dict[str, Any]) -> list[str]:
    rows = []
    for name, summary in result["targets"].items():
        other = summary["server_core_busy"] - summary["server_cpu"]
        if other > CONTENTION_WARNING:
            rows.append(
                f"WARNING: while {name} ran, {other:.0%} of its core went to other processes or the kernel "
                f"(server {summary['server_cpu']:.0%}, core busy {summary['server_core_busy']:.0%}): "
                "the machine was not quiet, rerun for trustworthy numbers"
            )
    for problem in result["checks"]["problems"]:
        rows.append(f"INVALID: {problem}")
    return rows


def _profile_rows(profile: dict[str, Any]) -> list[str]:
    rows = ["", "gateway under load (py-spy, share of Python samples holding the GIL):", "  own time:"]
    rows += [f"    {entry['percent']:5.1f}%  {entry['function']}" for entry in profile["own"][:8]]
    rows.append("  inclusive, gateway code and the libraries it calls:")
    rows += [f"    {entry['percent']:5.1f}%  {entry['function']}" for entry in profile["gateway"][:12]]
    shares = ", ".join(f"{name} {share:.0%}" for name, share in profile["cpu_share"].items())
    rows.append(f"  the server core by thread: {shares}")
    return rows


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
