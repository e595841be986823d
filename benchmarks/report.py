"""REPORT.md and throughput.png from results.json (run by run.py in the venv that has matplotlib)."""

from __future__ import annotations

import json
import statistics
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1 << 20

# Why a peer fails, when the sha256 check shows it (read from the peer's released source).
KNOWN_DEFECTS = {
    "django-tus": (
        'django-tus 0.5.0 opens the data file with `open(path, "wb")` for every PATCH '
        "(`TusFile._write_file`), which truncates it: after an upload of several PATCHes only the last "
        "chunk is left, behind zeros, so the size is right and the bytes are wrong. Uploads done in one "
        "PATCH are stored correctly. It also reads each PATCH body whole into memory (`request.body`), "
        "which needs `DATA_UPLOAD_MAX_MEMORY_SIZE = None`, and keeps its state in Django's cache "
        "(Redis here; the default per-process cache breaks with 2 workers)."
    ),
}


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def ratio(value: float | None, ceiling: float | None, digits: int = 2) -> str:
    if value is None or not ceiling:
        return "–"
    return f"{value / ceiling:.{digits}f}"


def summarize(runs: list[dict]) -> dict:
    ok = [r for r in runs if r["ok"]]
    shas = [r.get("sha256_ok") for r in runs]
    return {
        "n": len(runs),
        "ok": len(ok),
        "mb_s": median([r.get("mb_s") for r in ok]),
        "mb_s_min": min((r["mb_s"] for r in ok if r.get("mb_s")), default=None),
        "mb_s_max": max((r["mb_s"] for r in ok if r.get("mb_s")), default=None),
        "req_s": median([r.get("req_s") for r in ok]),
        "latency": median([r.get("completion_latency") for r in ok]),
        "p50": median([r.get("p50") for r in ok]),
        "p99": median([r.get("p99") for r in ok]),
        "p99_min": min((r["p99"] for r in ok if r.get("p99") is not None), default=None),
        "p99_max": max((r["p99"] for r in ok if r.get("p99") is not None), default=None),
        "rss": median([r.get("peak_rss") for r in ok]),
        "rss_growth": median(
            [r["peak_rss"] - r["idle_rss"] for r in ok if r.get("peak_rss") is not None and r.get("idle_rss")]
        ),
        "cpu": median([r.get("cpu_s") for r in ok]),
        "client_cpu": median([r.get("client_cpu_s") for r in ok]),
        "sha_good": sum(1 for s in shas if s is True),
        "sha_bad": sum(1 for s in shas if s is False),
        "errors": sorted({e for r in runs for e in r.get("errors", [])}),
        "sha_details": sorted({r.get("sha256_detail", "") for r in runs if r.get("sha256_ok") is False}),
    }


def sha_cell(s: dict) -> str:
    if s["sha_bad"]:
        return f"**NO** ({s['sha_bad']}/{s['n']} runs wrong)"
    if s["sha_good"] == s["n"]:
        return f"yes ({s['n']}/{s['n']})"
    return f"{s['sha_good']}/{s['n']}"


def size_text(n: int) -> str:
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB ({n} bytes)"
    return f"{n} bytes"


# --- S8/S9: many slow clients, a slow-client attack ---------------------------------------

SLOW_PROTOCOLS = ("slow-tus", "slow-legacy", "attack")
# Ratios in S8/S9 tables are against this server (the peer that speaks the protocol).
SLOW_REFERENCE = {"slow-tus": "tus-node", "attack": "tus-node", "slow-legacy": "chunked-upload"}

SLOW_COLUMNS = (
    "Columns (S8, S8L): **finished** = uploads whose last response came, of those started; **wall/ideal** = wall "
    "time from the first upload's start to the last one's response (or to the deadline, 1.5 × ideal + 10 s, when "
    "some did not finish) divided by the ideal: the stagger plus the body (and, legacy, each chunk) at the rate, "
    "what a server that reads every byte as it arrives gives; **errors** = uploads that failed or did not finish, "
    "plus failed probes; **probe** = a newcomer, every second on a new connection while the uploads run: create "
    "an upload and HEAD it (tus) or send a 1000-byte first chunk (legacy), p50/p99 in ms, failures after 30 s; "
    "**held** = most uploads, in one second, whose bodies advanced past what the kernel's socket buffers take "
    "without the server reading (so the server was reading them); **peak RSS** (+ growth over the tree at rest) "
    "as above, **per 1000** = growth × 1000 / uploads; **Redis** = peak connections to the server's redis-server "
    "held by one server process (CLIENT LIST every 0.5 s, each client's port mapped to its process), and in total; "
    "**CPU s** = server tree; **× ref** = this server's growth of RSS or CPU over the reference peer's; "
    "**bytes** = every finished upload's stored file checked: size and every byte."
)


def _pick(values: list, default=None):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else default


def summarize_slow(runs: list[dict]) -> dict:
    """Medians over the runs of one server in one S8/S9 scenario (errors and log notes gathered from all)."""

    def part(name: str, key: str) -> float | None:
        return _pick([(r.get(name) or {}).get(key) for r in runs])

    measured = [r for r in runs if r.get("wall") is not None]
    shas = [r.get("sha256_ok") for r in runs]
    growth = [r["peak_rss"] - r["idle_rss"] for r in measured if r.get("peak_rss") and r.get("idle_rss")]
    return {
        "n": len(runs),
        "measured": len(measured),
        "ok": sum(1 for r in runs if r.get("ok")),
        "count": _pick([r.get("count") for r in measured]),
        "finished": _pick([r.get("finished") for r in measured]),
        "unfinished": _pick([r.get("unfinished") for r in measured]),
        "wall_ideal": _pick([r.get("wall_ideal") for r in measured]),
        "wall_ideal_max": max((r["wall_ideal"] for r in measured if r.get("wall_ideal")), default=None),
        "ideal": _pick([r.get("ideal") for r in measured]),
        "error_count": _pick([r.get("error_count") for r in measured]),
        "probe_p50": part("probe", "p50"),
        "probe_p99": part("probe", "p99"),
        "probe_max": part("probe", "max"),
        "probe_count": part("probe", "count"),
        "probe_failures": part("probe", "failures"),
        "create_p50": part("create", "p50"),
        "create_p99": part("create", "p99"),
        "create_max": part("create", "max"),
        "create_count": part("create", "count"),
        "create_failures": part("create", "failures"),
        "patch_p50": part("patch", "p50"),
        "patch_p99": part("patch", "p99"),
        "patch_max": part("patch", "max"),
        "patch_count": part("patch", "count"),
        "patch_failures": part("patch", "failures"),
        "patch_skipped": part("patch", "skipped"),
        # Only where a request's body is well over what the kernel's buffers take in (trickle.py's rule).
        "held": _pick(
            [
                r.get("held_peak")
                for r in measured
                if r.get("size", 0) >= 2 * (r.get("kernel_absorbs") or 0) and "chunk" in r and r["chunk"] == r["size"]
            ]
        ),  # fmt: skip
        "rss": _pick([r.get("peak_rss") for r in measured]),
        "rss_growth": _pick(growth),
        "cpu": _pick([r.get("cpu_s") for r in measured]),
        "client_cpu": _pick([r.get("client_cpu_s") for r in measured]),
        "redis_process": _pick([r.get("redis_peak_per_process") for r in measured]),
        "redis_total": _pick([r.get("redis_peak_total") for r in measured]),
        "redis_rejected": _pick([r.get("redis_rejected") for r in measured]),
        "fates": [r.get("attack_fates") or {} for r in measured],
        "sha_good": sum(1 for s in shas if s is True),
        "sha_bad": sum(1 for s in shas if s is False),
        "verified": _pick([r.get("verified") for r in measured]),
        "errors": [e for r in runs for e in r.get("errors", [])],
        "sha_details": sorted({r.get("sha256_detail", "") for r in runs if r.get("sha256_ok") is False}),
        "logs": [r.get("server_log") or {} for r in runs],
        "sampler": sorted({r["redis_sampler_failure"] for r in runs if r.get("redis_sampler_failure")}),
    }


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{1000 * value:.0f}"


def _bytes_cell(s: dict) -> str:
    if s["sha_bad"]:
        return f"**NO** ({s['sha_bad']}/{s['n']} runs wrong)"
    if s["sha_good"]:
        return f"yes ({fmt(s['verified'], 0)} uploads)"
    return "–"


def _redis_cell(s: dict) -> str:
    if s["redis_total"] is None:
        return "–"
    return f"{fmt(s['redis_process'], 0)} ({fmt(s['redis_total'], 0)})"


def _mib(value: float | None) -> float | None:
    return None if value is None else value / MiB


def slow_notes(labels: dict, by_server: dict) -> list[str]:
    notes = []
    for key, s in by_server.items():
        label = labels[key]
        if s["errors"]:
            shown = "; ".join(s["errors"][:6])
            notes.append(f"- {label}: errors ({len(s['errors'])} kinds): {shown[:700]}")
        for log in s["logs"]:
            if (
                log.get("tracebacks")
                or log.get("too_many_connections")
                or log.get("worker_timeouts")
                or (log.get("top_errors"))
            ):
                notes.append(
                    f"- {label}: server log: {log.get('tracebacks', 0)} tracebacks, "
                    f"{log.get('too_many_connections', 0)} 'Too many connections', "
                    f"{log.get('worker_timeouts', 0)} worker timeouts; commonest: "
                    + "; ".join(log.get("top_errors", [])[:3])[:500]
                )
        if s["redis_rejected"]:
            notes.append(f"- {label}: redis-server rejected {fmt(s['redis_rejected'], 0)} connections (maxclients)")
        if s["sampler"]:
            notes.append(f"- {label}: Redis sampler: {'; '.join(s['sampler'])[:200]}")
        if s["sha_details"]:
            notes.append(f"- {label}: stored bytes wrong: {s['sha_details'][0][:300]}")
    return notes


def slow_section(scenario: dict, labels: dict, by_server: dict) -> list[str]:
    reference = by_server.get(SLOW_REFERENCE.get(scenario["protocol"], ""))
    ref_name = SLOW_REFERENCE.get(scenario["protocol"], "")
    lines = []
    if scenario["protocol"] == "attack":
        lines += [
            "300 connections send request-header bytes, one every 2 s each (slowloris), and 300 PATCHes to "
            "uploads made first declare a 10 MiB body and send none; they hold for up to 40 s. Meanwhile one other "
            "client a second, on a new connection, creates an upload (POST) and PATCHes 64 KiB to it at once; each "
            "gets 8 s for both. Latencies in ms over the clients that got an answer; failures include timeouts.",
            "",
            "| server | create p50 | p99 | max | create failed | PATCH p50 | p99 | max | PATCH failed "
            "| attack connections at the end | peak RSS MiB | CPU s | Redis /process (total) | bytes |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for key, s in by_server.items():
            if not s["measured"]:
                lines.append(f"| {labels[key]} | FAILED: {'; '.join(s['errors'])[:300]} |" + " |" * 13)
                continue
            fates = Counter()
            for f in s["fates"]:
                fates.update(f)
            fate_text = ", ".join(f"{n} {k}" for k, n in sorted(fates.items())) or "–"
            lines.append(
                f"| {labels[key]} | {_ms(s['create_p50'])} | {_ms(s['create_p99'])} | {_ms(s['create_max'])} | "
                f"{fmt(s['create_failures'], 0)}/{fmt(s['create_count'], 0)} | {_ms(s['patch_p50'])} | "
                f"{_ms(s['patch_p99'])} | {_ms(s['patch_max'])} | {fmt(s['patch_failures'], 0)}/"
                f"{fmt(s['patch_count'], 0)} | {fate_text} | {fmt(_mib(s['rss']), 0)} "
                f"(+{fmt(_mib(s['rss_growth']), 0)}) | {fmt(s['cpu'], 2)} | "
                f"{_redis_cell(s)} | {_bytes_cell(s)} |"
            )
        return lines + ["", *slow_notes(labels, by_server)]

    rate = scenario.get("rate") or 0
    shape = (
        "in one PATCH"
        if scenario["protocol"] == "slow-tus"
        else f"in chunks of {size_text(scenario['request_size'])}, then the md5 completion"
    )
    lines += [
        f"{scenario['count']} uploads of {size_text(scenario['size'])} {shape}, each body trickled at "
        f"{rate // 1024} KiB/s from a socket with a 32 KiB SO_SNDBUF; they start spread over 1.5 s. "
        f"Ratios (× ref) against {ref_name}.",
        "",
        "| server | finished | wall/ideal | errors | probe p50 ms | probe p99 ms | probe failed | held "
        "| peak RSS MiB | per 1000 MiB | Redis /process (total) | CPU s | RSS × ref | CPU × ref | client CPU s "
        "| bytes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, s in by_server.items():
        if not s["measured"]:
            lines.append(f"| {labels[key]} | FAILED: {'; '.join(s['errors'])[:300]} |" + " |" * 15)
            continue
        growth = s["rss_growth"]
        per_1000 = growth * 1000 / s["count"] / MiB if growth is not None and s["count"] else None
        redis = _redis_cell(s)
        r = reference if reference and reference["measured"] else None
        wall = fmt(s["wall_ideal"], 2) + (" (deadline)" if s["unfinished"] else "")
        lines.append(
            f"| {labels[key]} | {fmt(s['finished'], 0)}/{fmt(s['count'], 0)} | {wall} | "
            f"{fmt(s['error_count'], 0)} | {_ms(s['probe_p50'])} | {_ms(s['probe_p99'])} | "
            f"{fmt(s['probe_failures'], 0)}/{fmt(s['probe_count'], 0)} | {fmt(s['held'], 0)} | "
            f"{fmt(_mib(s['rss']), 0)} (+{fmt(_mib(growth), 0)}) | {fmt(per_1000, 1)} | {redis} | "
            f"{fmt(s['cpu'], 2)} | {ratio(growth, r and r['rss_growth'], 1)} | {ratio(s['cpu'], r and r['cpu'], 1)} | "
            f"{fmt(s['client_cpu'], 2)} | {_bytes_cell(s)} |"
        )
    return lines + ["", *slow_notes(labels, by_server)]


def slow_overview(results: dict, labels: dict) -> list[str]:
    """One line per deployment across every S8/S8L scenario: wall/ideal, errors, probe p99."""
    keys = [s["key"] for s in results["scenarios"] if s["protocol"] in ("slow-tus", "slow-legacy")]
    if not keys:
        return []
    cells: dict[str, dict[str, str]] = {}
    for key in keys:
        for server in results["servers"]:
            subset = [r for r in results["runs"] if r["scenario"] == key and r["server"] == server["key"]]
            if not subset:
                continue
            s = summarize_slow(subset)
            text = "failed to start" if not s["measured"] else (
                f"{fmt(s['wall_ideal'], 2)} / {fmt(s['error_count'], 0)} / {_ms(s['probe_p99'])}"
            )  # fmt: skip
            cells.setdefault(server["key"], {})[key] = text
    lines = [
        "## S8, S8L: many slow clients at a glance",
        "",
        "Each cell: wall/ideal / errors / newcomer probe p99 in ms (details in each scenario's table below).",
        "",
        "| server | " + " | ".join(keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for server_key, row in cells.items():
        lines.append(f"| {labels[server_key]} | " + " | ".join(row.get(k, "") for k in keys) + " |")
    return [*lines, "", SLOW_COLUMNS, ""]


def measured_line(scenario: dict, meta: dict, runs: list[dict], labels: dict) -> list[str]:
    """Which run measured which servers, where that is not the header's run (results merged from several runs).

    Each run record carries its run's ``measured`` (date, command, scale, tusbridge source);
    records without one belong to the scenario's ``measured``, or else to the header's run.
    """
    groups: dict[str, tuple[dict, list[str]]] = {}
    for run in runs:
        if run["scenario"] != scenario["key"]:
            continue
        m = run.get("measured") or scenario.get("measured") or {}
        if not m or m.get("date") == meta.get("date"):
            continue
        _, servers = groups.setdefault(m["date"] + m.get("command", ""), (m, []))
        if run["server"] not in servers:
            servers.append(run["server"])
    lines = []
    for m, servers in groups.values():
        repeats = m.get("slow_repeats") if scenario["protocol"] in SLOW_PROTOCOLS else m.get("repeats")
        lines.append(
            f"Measured in a separate run on {m['date']} ({', '.join(servers)}): `{m['command']}` (scale "
            f"{m['scale']}, {min(repeats or 1, m.get('repeats') or 1)} run(s) per server), tusbridge from the "
            f"{m.get('tusbridge_source', '?')}."
        )
    return [*lines, ""] if lines else []


def build(results: dict) -> tuple[str, dict]:
    meta, runs = results["meta"], results["runs"]
    labels = {s["key"]: s["label"] for s in results["servers"]}
    lines = [
        "# tusbridge benchmarks",
        "",
        "Generated by `benchmarks/run.py` (`make bench`); do not edit by hand — see",
        "`benchmarks/README.md` for the method and for profiling notes.",
        "",
        f"- date: {meta['date']}; scale **{meta['scale']}** of the full sizes, **{meta['repeats']}** repeat(s) "
        f"per server and scenario, run in alternating order; took {meta['duration_s']} s",
        f"- command: `{meta['command']}`",
        f"- machine: {meta['nproc']} cores ({meta['cpu']}), {meta['memory']} memory, kernel {meta['kernel']}; "
        f"data directory on {meta['data_disk']}",
        f"- Python {meta['python']}, Node {meta['node']}, {meta['redis']}",
        f"- tusbridge from the {meta['tusbridge_source']}, imported from `{meta.get('tusbridge_imported_from', '?')}`"
        f" on Django/gunicorn {meta['tusbridge_django_gunicorn']}; django-chunked-upload on "
        f"{meta.get('chunked-upload_django_gunicorn', '–')}; "
        f"django-tus on {meta.get('django-tus_django_gunicorn', '–')}",
        f"- gunicorn servers: {meta['workers']} workers, `--timeout {meta['gunicorn_timeout']}`; gthread and "
        "tusbridge.gunicorn.workers.ThreadWorker (gthread whose threads wait up to 2 ms for a kept-alive "
        f"connection's next request) with {meta['gthread_threads']} threads per worker and `--reuse-port` "
        "(a listening socket per worker). "
        "The tus Node server is one Node process.",
    ]
    if "django-floor" in labels:
        lines.append(
            "- floor (legacy scenarios): the Django settings and gunicorn set-up of tusbridge's site with a view "
            "that only lets Django parse the chunk (its own multipart parser) and writes it at its offset: no lock, "
            "record, checksum or checks, so not an upload server, but what any Django app pays per chunk here "
            "(`sites/floor_site`)."
        )
    if any(k in labels for k in ("tusbridge-gevent", "tusbridge-asgi")):
        lines += [
            f"- S8/S9 deployments: gunicorn's gevent worker, {meta.get('gevent_workers', meta['workers'])} workers "
            f"with `--worker-connections {meta.get('gevent_connections', '?')}` and `--reuse-port`; uvicorn on "
            f"`sites/tusbridge_site/asgi.py`, {meta.get('asgi_workers', meta['workers'])} workers, "
            "`--limit-concurrency 20000 --backlog 4096`.",
        ]
    lines += [
        "",
        "Columns: **MB/s** = uploaded bytes (10^6) / wall time from the first request to the last response "
        "(median of the runs, then min–max); **req/s** = HTTP requests / wall time; **completion** = duration "
        "of the final PATCH (tus; median over uploads for S4) or of the md5 completion POST (legacy); "
        "**peak RSS** (+ growth over the same tree at rest before the run) = highest sum of RSS over the "
        "server's process tree (plus its private redis-server "
        "where the server uses one), sampled every 0.1 s — forked workers' shared pages count once per "
        "worker; **CPU s** = user+system time of that tree during the run; **× ceiling** = the server's "
        "median divided by the socket sink's in the same scenario; **client CPU s** = the client's own CPU "
        "(the same client for every server); **sha256** = the bytes the server stored hash to the source's.",
        "",
    ]
    plot_data: dict = {"scenarios": [], "servers": labels}
    overview_done = False
    for scenario in results["scenarios"]:
        key = scenario["key"]
        if scenario["protocol"] in SLOW_PROTOCOLS:
            if not overview_done:
                lines += slow_overview(results, labels)
                overview_done = True
            slow = {}
            for server in results["servers"]:
                subset = [r for r in runs if r["scenario"] == key and r["server"] == server["key"]]
                if subset:
                    slow[server["key"]] = summarize_slow(subset)
            lines += [f"## {key}: {scenario['title']}", "", *measured_line(scenario, meta, runs, labels)]
            lines += [*slow_section(scenario, labels, slow), ""]
            continue
        by_server = {}
        for server in results["servers"]:
            subset = [r for r in runs if r["scenario"] == key and r["server"] == server["key"]]
            if subset:
                by_server[server["key"]] = summarize(subset)
        ceiling = by_server.get("sink")
        lines += [f"## {key}: {scenario['title']}", "", *measured_line(scenario, meta, runs, labels)]
        if scenario["protocol"] == "heads":
            lines += [
                f"{scenario['count']} idle uploads, each holding {size_text(scenario['size'])}; one HEAD each, "
                "all sent at once on their own (already open) connections. Each run measures 5 such bursts after "
                "an unmeasured one; p50 and p99 are the medians over its bursts, the other figures cover all 5.",
                "",
                "| server | p50 ms | p99 ms | p99 min–max | req/s | peak RSS MiB | CPU s | p99 × ceiling "
                "| RSS × ceiling | CPU × ceiling | client CPU s | sha256 |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        else:
            lines += [
                f"{scenario['parallel']} × {size_text(scenario['size'])} in requests of "
                f"{size_text(scenario['request_size'])}.",
                "",
                "| server | MB/s | min–max | req/s | completion s | peak RSS MiB | CPU s | MB/s × ceiling "
                "| RSS × ceiling | CPU × ceiling | client CPU s | sha256 |",
                "|---|---|---|---|---|---|---|---|---|---|---|---|",
            ]
        for server_key, s in by_server.items():
            label = labels[server_key]
            if not s["ok"]:
                lines.append(f"| {label} | FAILED ({s['n']}/{s['n']} runs): {'; '.join(s['errors'])[:300]} |"
                             + " |" * 9 + f" {sha_cell(s)} |")  # fmt: skip
                continue
            c = ceiling if ceiling and ceiling["ok"] else None
            rss_mib = s["rss"] / MiB if s["rss"] is not None else None
            growth = s["rss_growth"] / MiB if s["rss_growth"] is not None else None
            common_tail = (
                f"{fmt(rss_mib, 0)} (+{fmt(growth, 0)}) | {fmt(s['cpu'], 2)} | {{first}} | "
                f"{ratio(s['rss'], c and c['rss'], 1)} | {ratio(s['cpu'], c and c['cpu'], 1)} | "
                f"{fmt(s['client_cpu'], 2)} | {sha_cell(s)} |"
            )
            if scenario["protocol"] == "heads":
                row = (
                    f"| {label} | {fmt(s['p50'] * 1000)} | {fmt(s['p99'] * 1000)} | "
                    f"{fmt(s['p99_min'] * 1000)}–{fmt(s['p99_max'] * 1000)} | {fmt(s['req_s'], 0)} | "
                    + common_tail.format(first=ratio(s["p99"], c and c["p99"], 1))
                )
            else:
                row = (
                    f"| {label} | {fmt(s['mb_s'])} | {fmt(s['mb_s_min'])}–{fmt(s['mb_s_max'])} | "
                    f"{fmt(s['req_s'], 1)} | {fmt(s['latency'], 3)} | "
                    + common_tail.format(first=ratio(s["mb_s"], c and c["mb_s"]))
                )
            if s["ok"] < s["n"]:
                row += f" ({s['n'] - s['ok']} of {s['n']} runs failed)"
            lines.append(row)
        notes = []
        for server_key, s in by_server.items():
            if s["errors"]:
                notes.append(f"- {labels[server_key]}: errors: {'; '.join(s['errors'])[:500]}")
            if s["sha_details"]:
                notes.append(f"- {labels[server_key]}: stored bytes wrong: {s['sha_details'][0][:300]}")
        if notes:
            lines += ["", *notes]
        lines.append("")
        plot_data["scenarios"].append({"key": key, "protocol": scenario["protocol"], "servers": by_server})

    bad = {r["server"] for r in runs if r.get("sha256_ok") is False}
    peers_lines = ["## Peers that failed the sha256 check", ""]
    if bad:
        for server_key in sorted(bad):
            scen = sorted({r["scenario"] for r in runs if r["server"] == server_key and r.get("sha256_ok") is False})
            peers_lines.append(f"- **{labels[server_key]}** stored wrong bytes in {', '.join(scen)}. "
                               + KNOWN_DEFECTS.get(server_key, ""))  # fmt: skip
    else:
        peers_lines.append("- none: every server stored the bytes it acknowledged.")
    lines += peers_lines + ["", "![throughput per scenario and server](throughput.png)", ""]
    return "\n".join(lines), plot_data


COLORS = {
    "tusbridge-sync": "#1f77b4",
    "tusbridge-gthread": "#6baed6",
    "tusbridge-threads": "#08519c",
    "tus-node": "#2ca02c",
    "django-tus": "#d62728",
    "chunked-upload": "#ff7f0e",
    "django-floor": "#bcbd22",
    "sink": "#7f7f7f",
    "tusbridge-gevent": "#9467bd",
    "tusbridge-asgi": "#e377c2",
}


def plot(plot_data: dict, meta: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    upload = [s for s in plot_data["scenarios"] if s["protocol"] != "heads"]
    heads = [s for s in plot_data["scenarios"] if s["protocol"] == "heads"]
    servers = list(plot_data["servers"])
    widths = [max(1, len(upload)) * 1.6, 1.8] if heads else [1]
    fig, axes = plt.subplots(1, len(widths), figsize=(14, 6.5), gridspec_kw={"width_ratios": widths}, squeeze=False)
    ax = axes[0][0]
    handles = {}
    for x, scenario in enumerate(upload):
        present = [k for k in servers if scenario["servers"].get(k, {}).get("ok")]
        if not present:
            continue
        width = 0.84 / len(present)
        for i, server in enumerate(present):
            s = scenario["servers"][server]
            xpos = x - 0.42 + width * (i + 0.5)
            rect = ax.bar(
                xpos, s["mb_s"], width, color=COLORS.get(server), edgecolor="white", linewidth=0.5,
                yerr=[[s["mb_s"] - s["mb_s_min"]], [s["mb_s_max"] - s["mb_s"]]], capsize=2,
                label=plot_data["servers"][server],
            )[0]  # fmt: skip
            handles.setdefault(server, rect)
            text = f"{s['mb_s']:.0f}"
            if s["sha_bad"]:
                rect.set_hatch("xxx")
                rect.set_edgecolor("black")
                text += "\nsha256\nWRONG"
            ax.annotate(text, (xpos, s["mb_s_max"]), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6,
                        color="#d62728" if s["sha_bad"] else "black")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xticks(range(len(upload)), [s["key"] for s in upload])
    ax.set_ylabel("MB/s, log scale (median; whiskers: min–max)")
    ax.set_title(f"Upload throughput (scale {meta['scale']}, {meta['repeats']} repeat(s) per server)")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.margins(y=0.15)
    from matplotlib.patches import Patch

    fig.legend([Patch(color=COLORS.get(k)) for k in servers if k in handles],
               [plot_data["servers"][k] for k in servers if k in handles],
               loc="lower center", ncol=3, fontsize=8, frameon=False)  # fmt: skip
    if heads:
        ax2 = axes[0][1]
        scenario = heads[0]
        names, values, colors, errs = [], [], [], [[], []]
        for server in servers:
            s = scenario["servers"].get(server)
            if not s or not s["ok"]:
                continue
            names.append(server)
            values.append(s["p99"] * 1000)
            errs[0].append((s["p99"] - s["p99_min"]) * 1000)
            errs[1].append((s["p99_max"] - s["p99"]) * 1000)
            colors.append(COLORS.get(server, None))
        ax2.bar(range(len(names)), values, color=colors, yerr=errs, capsize=2)
        for i, value in enumerate(values):
            ax2.annotate(f"{value:.0f}", (i, value + errs[1][i]), xytext=(0, 2), textcoords="offset points",
                         ha="center", va="bottom", fontsize=6)  # fmt: skip
        ax2.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
        ax2.set_ylabel("p99 latency, ms")
        ax2.set_title(f"{scenario['key']}: 200 concurrent HEADs")
        ax2.grid(axis="y", alpha=0.3)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)


def main() -> int:
    """report.py [RESULTS [REPORT_MD [PLOT_PNG]]], by default results.json, REPORT.md, throughput.png here."""
    results_path = Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.json"
    report_path = Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "REPORT.md"
    plot_path = Path(sys.argv[3]) if len(sys.argv) > 3 else HERE / "throughput.png"
    results = json.loads(results_path.read_text())
    text, plot_data = build(results)
    report_path.write_text(text)
    plot(plot_data, results["meta"], plot_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
