"""Text for people: the tables of `lb status`, `lb pool list|show` and `lb top`,
drawn from the admin socket's results (docs/admin.md). A key the daemon did
not send shows as "-" rather than failing the whole table."""

from __future__ import annotations


def human_bytes(n) -> str:
    if not isinstance(n, (int, float)):
        return "-"
    for unit in ("B", "K", "M", "G", "T"):
        if abs(n) < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return "-"  # not reached


def human_ms(ms) -> str | None:
    """A response time: the last minute's percentile of a histogram with
    fixed buckets, so two significant digits say all it knows."""
    if ms is None:
        return None
    return f"{ms:.2g}ms" if ms < 10 else f"{ms:.0f}ms"


def human_duration(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.1f}"
    return str(value)


def table(headers: list[str], rows: list[list], indent: str = "") -> list[str]:
    """Columns as wide as their widest cell; numbers right-aligned, the last
    column left as is (it may be long: a check's detail)."""
    text = [[cell(v) for v in row] for row in rows]
    numeric = [all(isinstance(row[i], (int, float)) and not isinstance(row[i], bool) for row in rows if row[i]
                   is not None) for i in range(len(headers))]
    widths = [max([len(h)] + [len(r[i]) for r in text]) for i, h in enumerate(headers)]
    out = []
    for row in [headers, *text]:
        cells = []
        for i, v in enumerate(row):
            if i == len(row) - 1:
                cells.append(v)
            elif numeric[i]:
                cells.append(v.rjust(widths[i]))
            else:
                cells.append(v.ljust(widths[i]))
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _health(b: dict) -> str:
    health = b.get("health", "-")
    return f"{health} (backup)" if b.get("backup") else health


def _check(b: dict) -> str:
    return b.get("down_reason") or b.get("check") or "-"


def backend_rows(backends: dict, rates: dict | None = None) -> tuple[list[str], list[list]]:
    headers = ["BACKEND", "ADDRESS", "HEALTH", "ADMIN", "WEIGHT", "EFF", "ACTIVE", "TOTAL",
               "CONNERR", "TIMEOUT", "IN", "OUT"]
    if rates is not None:
        headers += ["CONN/S", "BYTES/S", "P50", "P99"]
    headers.append("CHECK")
    rows = []
    for name, b in backends.items():
        row = [name, b.get("address"), _health(b), b.get("admin"), b.get("weight"), b.get("eff_weight"),
               b.get("active"), b.get("total"), b.get("connect_errors"), b.get("connect_timeouts"),
               human_bytes(b.get("bytes_in")), human_bytes(b.get("bytes_out"))]
        if rates is not None:
            conns, nbytes = rates.get(name, (None, None))
            row += [None if conns is None else round(conns, 1),
                    None if nbytes is None else human_bytes(nbytes),
                    human_ms(b.get("p50_ms")), human_ms(b.get("p99_ms"))]
        row.append(_check(b))
        rows.append(row)
    return headers, rows


def pool_lines(name: str, pool: dict, rates: dict | None = None) -> list[str]:
    backends = pool.get("backends") or {}
    up = sum(1 for b in backends.values() if b.get("health") == "up")
    active = sum(b.get("active") or 0 for b in backends.values())
    lines = [f"pool {name}  {pool.get('algorithm', '-')}  {up}/{len(backends)} up  {active} active"]
    if backends:
        lines += table(*backend_rows(backends, rates), indent="  ")
    else:
        lines.append("  (no backends)")
    if pool.get("empty_because"):
        lines.append(f"  ! {pool['empty_because']}")
    return lines


def _paused(count, now) -> str | None:
    if count is None:
        return None
    return f"{count}*" if now else f"{count}"


def worker_lines(workers: list[dict]) -> list[str]:
    headers = ["WORKER", "PID", "GEN", "STATE", "CPU%", "RSS", "FDS", "ACTIVE", "ACCEPTED", "REQUESTS", "LB-ERRORS",
               "PAUSED", "LIMITED", "RESTARTS"]
    # REQUESTS and LB-ERRORS count http requests, and the error pages lb answered itself.
    # PAUSED: times accepting stopped for want of fds; LIMITED: at a max_connections;
    # a "*" after them: not accepting now
    rows = [[w.get("index"), w.get("pid"), w.get("generation"), w.get("state"), w.get("cpu_percent"),
             human_bytes(w.get("rss")), w.get("open_fds"), w.get("active"), w.get("accepted"),
             w.get("http_requests"), w.get("http_errors"), _paused(w.get("accept_paused"), w.get("paused_now")),
             w.get("accept_limited"), w.get("restarts")]
            for w in workers]
    return table(headers, rows)


def h2_lines(workers: list[dict]) -> list[str]:
    """HTTP/2 to clients, all workers together; nothing when none spoke it."""
    total = {k: sum(w.get(k) or 0 for w in workers)
             for k in ("h2_connections", "h2_streams", "h2_goaways", "h2_refused")}
    if not total["h2_connections"]:
        return []
    return [f"http/2  {total['h2_connections']} connections  {total['h2_streams']} streams  "
            f"{total['h2_goaways']} goaways sent  {total['h2_refused']} refused for abuse or broken framing"]


def status_lines(status: dict, rates: dict | None = None) -> list[str]:
    """rates: {pool: {backend: (connections/s, bytes/s)}}, for `lb top`."""
    config = status.get("config") or {}
    sha = config.get("sha256") or "-"
    lines = [
        f"lb {status.get('version', '-')}  pid {cell(status.get('pid'))}  up {human_duration(status.get('uptime'))}"
        f"  generation {cell(status.get('generation'))}",
        f"config {config.get('path', '-')}  sha256 {sha[:12]}",
        "",
    ]
    listeners = status.get("listeners") or []
    if listeners:
        lines += table(["LISTENER", "BIND", "MODE", "POOL", "ACTIVE", "MAX", "LIMITED"],
                       [[li.get("name"), ", ".join(li.get("bind") or []), li.get("mode"), li.get("pool"),
                         li.get("active"), li.get("max_connections") or "-", li.get("limited")]
                        for li in listeners])
        lines.append("")
    for name, pool in (status.get("pools") or {}).items():
        lines += pool_lines(name, pool, None if rates is None else rates.get(name, {}))
        lines.append("")
    if status.get("access_rules"):
        lines += access_rule_lines(status["access_rules"])
        lines.append("")
    if status.get("limits"):
        lines += limit_lines(status["limits"])
    if status.get("caches"):
        lines += cache_lines(status["caches"])
        lines.append("")
    if status.get("splits"):
        from lb.cli.split import split_lines

        lines += split_lines(status["splits"])
        lines.append("")
    if status.get("rollouts"):
        from lb.cli.rollout import rollout_lines

        lines += rollout_lines(status["rollouts"])
        lines.append("")
    lines += worker_lines(status.get("workers") or [])
    lines += h2_lines(status.get("workers") or [])
    checker = status.get("checker")
    if checker:
        lines.append(f"checker pid {cell(checker.get('pid'))}, {cell(checker.get('restarts'))} restart(s)")
    logs = status.get("access_logs")
    if logs:
        logger = logs.get("logger") or {}
        lines.append(f"access logs {', '.join(logs.get('logs') or [])}: {cell(logs.get('lines'))} line(s) written, "
                     f"{cell(logs.get('drops'))} record(s) dropped (rings of {cell(logs.get('ring_records'))}), "
                     f"{cell(logs.get('write_errors'))} lost in writing; "
                     f"logger pid {cell(logger.get('pid'))}, {cell(logger.get('restarts'))} restart(s)")
    return lines


def rule_site(rule: dict) -> str:
    """Where an allow/deny rule is: a listener, or one of its routes."""
    if rule.get("route") is None:
        return f"listener {rule.get('listener')}"
    return f"listener {rule.get('listener')} route {rule.get('route_name') or rule.get('route')}"


def _rule_table(rules: list[dict]) -> tuple[list[str], list[list]]:
    rows = [[rule_site(r), r.get("rule"), r.get("count") if r.get("decision") == "allowed" else None,
             r.get("count") if r.get("decision") == "denied" else None] for r in rules]
    return ["ACCESS", "RULE", "ALLOWED", "DENIED"], rows


def access_rule_lines(rules: list[dict]) -> list[str]:
    """Each allow/deny rule with the decisions it made: what `lb status`
    shows of ACLs (denials by rule)."""
    return table(*_rule_table(rules))


def _limit_rule(lim: dict) -> str:
    parts = [lim.get("key") or "-"]
    if lim.get("rate"):
        parts.append(f"{lim['rate']} burst {lim.get('burst', 0)}")
    if lim.get("concurrent"):
        parts.append(f"{lim['concurrent']} in flight")
    if lim.get("dry_run"):
        parts.append("dry run")
    return ", ".join(parts)


def limit_lines(limits: list[dict]) -> list[str]:
    """Each limit with its decisions: what `lb status` and `lb limits show`
    show of rate limits (refusals by rule). In dry run, REFUSED counts the
    requests that would have been refused and were let through."""
    rows = []
    for lim in limits:
        c = lim.get("counts") or {}
        rows.append([lim.get("name"), _limit_rule(lim), ", ".join(lim.get("used_by") or []) or "-",
                     c.get("admitted"), c.get("refused_rate"), c.get("refused_concurrent"), c.get("unkeyed"),
                     c.get("table_full"), c.get("evicted")])
    return table(["LIMIT", "RULE", "USED BY", "ADMITTED", "REFUSED RATE", "REFUSED CONCURRENT", "UNKEYED",
                  "TABLE FULL", "EVICTED"], rows)


def limit_key_lines(lim: dict) -> list[str]:
    """`lb limits show NAME`: the limit's most active keys."""
    keys = lim.get("top") or []
    if not keys:
        return [f"no active key in {lim.get('name')}"]
    period = (lim.get("rate") or "/1s").split("/", 1)[1]
    headers = ["KEY", f"REQUESTS/{period}", "REFUSED", "IN FLIGHT"]
    if lim.get("rate"):
        headers += ["REMAINING", "FULL IN"]
    rows = []
    for k in keys:
        row = [k.get("key") + ("..." if k.get("truncated") else ""), k.get("rate"), k.get("refused"),
               k.get("in_flight")]
        if lim.get("rate"):
            row += [k.get("remaining"), f"{k.get('full_in')}s"]
        rows.append(row)
    return table(headers, rows)


def acl_lines(acls: list[dict]) -> list[str]:
    """`lb acl show`: each ACL, the rules using it, and an address's verdict."""
    lines = table(["ACL", "IPV4", "IPV6", "GENERATION", "SOURCE"],
                  [[a.get("name"), a.get("ipv4"), a.get("ipv6"), a.get("generation"), _acl_source(a)] for a in acls])
    for a in acls:
        if a.get("rules"):
            lines.append("")
            lines.append(f"rules using {a.get('name')}:")
            lines += table(*_rule_table(a["rules"]), indent="  ")
        verdict = a.get("address")
        if verdict:
            lines.append("")
            decided = f"by {verdict['prefix']}" if verdict.get("prefix") else "no prefix covers it"
            lines.append(f"{verdict.get('address')}: {'in' if verdict.get('match') else 'not in'} "
                         f"{a.get('name')} ({decided})")
        for prefix in a.get("prefixes") or []:
            lines.append(prefix)
    return lines


def _acl_source(a: dict) -> str:
    state = a.get("state") or {}
    config = a.get("config") or {}
    parts = []
    if state.get("file"):
        parts.append(f"loaded {state['file']}")
    else:
        if config.get("cidrs"):
            parts.append(f"{config['cidrs']} cidrs")
        if config.get("file"):
            parts.append(config["file"])
    if state.get("prefixes"):
        parts.append(f"{len(state['prefixes'])} runtime change(s)")
    return ", ".join(parts) or "-"


def pool_list_lines(pools: list[dict]) -> list[str]:
    return table(["POOL", "ALGORITHM", "BACKENDS", "UP", "ACTIVE"],
                 [[p.get("name"), p.get("algorithm"), p.get("backends"), p.get("up"), p.get("active")]
                  for p in pools])


def rates(before: dict | None, after: dict, seconds: float) -> dict:
    """Connections and bytes (in + out) per second of each backend between two
    statuses; a backend new in `after` has no rate yet."""
    out: dict = {}
    for pname, pool in (after.get("pools") or {}).items():
        old_backends = ((before or {}).get("pools") or {}).get(pname, {}).get("backends") or {}
        for bname, b in (pool.get("backends") or {}).items():
            old = old_backends.get(bname)
            if old is None or seconds <= 0:
                out.setdefault(pname, {})[bname] = (None, None)
                continue
            try:
                conns = max(0, b["total"] - old["total"]) / seconds
                nbytes = max(0, b["bytes_in"] + b["bytes_out"] - old["bytes_in"] - old["bytes_out"]) / seconds
            except (KeyError, TypeError):
                conns = nbytes = None
            out.setdefault(pname, {})[bname] = (conns, nbytes)
    return out


def cert_lines(certificates: list[dict], now: float) -> list[str]:
    """`lb cert list`: a certificate a line, the default of each listener marked."""
    rows = []
    for c in certificates:
        left = c.get("not_after", 0) - now if isinstance(c.get("not_after"), (int, float)) else None
        expiry = "-" if left is None else ("EXPIRED" if left < 0 else f"{left / 86400:.0f}d")
        rows.append([c.get("listener"), "*" if c.get("default") else "", ", ".join(c.get("names") or []),
                     c.get("key"), expiry, c.get("issuer"), (c.get("sha256") or "")[:16], c.get("cert")])
    return table(["LISTENER", "DEFAULT", "NAMES", "KEY", "EXPIRES IN", "ISSUER", "SHA-256", "FILE"], rows)


def stats_lines(doc: dict) -> list[str]:
    """`lb stats`: traffic per listener and route, pool and backend, with the
    last minute's response-time percentiles."""
    headers = ["REQUESTS", "REQ/S", "5XX", "FAILED", "P50", "P99", "WINDOW"]

    def cols(e: dict) -> list:
        window = e.get("window_seconds")
        return [e.get("requests"), e.get("rate"), e.get("5xx"), e.get("failed"), human_ms(e.get("p50_ms")),
                human_ms(e.get("p99_ms")), "since start" if window is None else f"{window:.0f}s"]

    rows = []
    for li in doc.get("listeners") or []:
        rows.append([li.get("name"), "-"] + cols(li))
        rows += [[li.get("name"), r.get("name")] + cols(r) for r in li.get("routes") or []]
    lines = table(["LISTENER", "ROUTE"] + headers, rows) + [""]
    lines += table(["POOL", "ALGORITHM", "ACTIVE"] + headers,
                   [[p.get("name"), p.get("algorithm"), p.get("active")] + cols(p) for p in doc.get("pools") or []])
    lines.append("")
    lines += table(["POOL", "BACKEND", "STATE", "ACTIVE"] + headers,
                   [[p.get("name"), b.get("name"), b.get("state"), b.get("active")] + cols(b)
                    for p in doc.get("pools") or [] for b in p.get("backends") or []])
    return lines


def top_lines(doc: dict) -> list[str]:
    """`lb top --by`: the heaviest keys of the window."""
    lo, hi = doc.get("window_seconds") or (None, None)
    what = {"client": "CLIENT", "path": "PATH", "status": "STATUS"}.get(doc.get("by"), "KEY")
    lines = [f"top {doc.get('by')}s of the last {lo}-{hi} s, all workers"
             + ("" if doc.get("exact") else " (a count may be over by at most its ERROR)"), ""]
    headers = [what, "COUNT"] + ([] if doc.get("exact") else ["ERROR"])
    rows = [[i.get("key"), i.get("count")] + ([] if doc.get("exact") else [i.get("error")])
            for i in doc.get("items") or []]
    return lines + (table(headers, rows) if rows else ["(nothing counted yet)"])


def cache_lines(caches: list[dict]) -> list[str]:
    """Each [caches.NAME]: what it holds and what it did, for `lb status`."""
    lines = ["", "CACHE      OBJECTS  BYTES         HIT        MISS       STALE      BYPASS     STORED     EVICTED"]
    for item in caches:
        c = item["counts"]
        lines.append(f"{item['name']:<10} {c['objects']:<8} {c['bytes']:<13} {c['hit']:<10} {c['miss']:<10} "
                     f"{c['stale']:<10} {c['bypass']:<10} {c['stored']:<10} {c['evicted']}")
        d = item.get("disk")
        if d:
            # its hits are the cache's too; what it stores is what memory demoted
            lines.append(f"{'  disk':<10} {d['objects']:<8} {d['bytes']:<13} {d['hit']:<10} {'-':<10} "
                         f"{'-':<10} {'-':<10} {d['demoted']:<10} {d['evicted']}")
    return lines
