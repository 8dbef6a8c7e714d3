"""`lb cache`: the shared caches ([caches.NAME]) of the running daemon:
purge by URL, key prefix or tag, their counters, and the objects stored."""

import click

from lb.cli.app import App, print_json


@click.group()
def cache() -> None:
    """Purge and inspect the caches of the running lb."""


def _cache_option():
    return click.option("--cache", "cache_name", metavar="NAME",
                        help="Only this [caches.NAME] (default: every cache).")


@cache.command()
@click.argument("target")
@click.option("--prefix", "mode", flag_value="prefix", help="TARGET is a prefix: every URL that starts with it.")
@click.option("--tag", "mode", flag_value="tag", help="TARGET is a tag (from the cache's tag_header).")
@_cache_option()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def purge(app: App, target: str, mode: str | None, cache_name: str | None, as_json: bool) -> None:
    """Remove TARGET from the caches: a URL (http://host[:port]/path?query,
    every Vary variant of it; the scheme is not part of the key), with
    --prefix every URL that starts with it, with --tag every object the
    origin tagged so."""
    args = {mode or "url": target}
    if cache_name:
        args["cache"] = cache_name
    result = app.call("cache.purge", args)
    if as_json:
        print_json(result)
        return
    for name, n in result["purged"].items():
        click.echo(f"{name}: {n} object(s) purged")


@cache.command()
@_cache_option()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def stats(app: App, cache_name: str | None, as_json: bool) -> None:
    """Each cache's objects and bytes stored, and its hits, misses, stale
    and bypassed requests, stores, evictions and purges."""
    result = app.call("cache.stats", {"cache": cache_name} if cache_name else {})
    if as_json:
        print_json(result)
        return
    for item in result["caches"]:
        c = item["counts"]
        looked = c["hit"] + c["miss"] + c["stale"]
        ratio = f"{100 * c['hit'] / looked:.1f}%" if looked else "-"
        click.echo(f"{item['name']}: {c['objects']} objects, {c['bytes']} of {c['capacity']} bytes "
                   f"(used by {', '.join(item['used_by']) or 'nothing'})")
        click.echo(f"  hit {c['hit']}  miss {c['miss']}  stale {c['stale']}  bypass {c['bypass']}  "
                   f"hit ratio {ratio}")
        click.echo(f"  stored {c['stored']}  not stored {c['not_stored']}  store failed {c['store_failed']}  "
                   f"evicted {c['evicted']}  invalidated {c['invalidated']}  purged {c['purged']}")
        click.echo(f"  revalidated {c['revalidated']}  stale served {c['stale_served']}  collapsed {c['collapsed']}")
        click.echo(f"  refreshed in the background {c['refreshed']}  refreshes failed {c['refresh_failed']}")
        click.echo(f"  filled whole after a range miss {c['range_fills']}  range fills failed {c['range_fill_failed']}")
        d = item.get("disk")
        if d:
            click.echo(f"  disk {d['path']}: {d['objects']} objects, {d['bytes']} of {d['capacity']} bytes; "
                       f"hit {d['hit']}  demoted {d['demoted']}  evicted {d['evicted']}  dropped {d['dropped']}")


@cache.command(name="list")
@click.option("--prefix", default="", help="Only URLs that start with this (http://host/path...).")
@click.option("-n", "--limit", type=click.IntRange(1, 100000), default=100, show_default=True)
@_cache_option()
@click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")
@click.pass_obj
def list_(app: App, prefix: str, limit: int, cache_name: str | None, as_json: bool) -> None:
    """The objects stored: key (host and target), status, size, age and
    the seconds it stays fresh."""
    args = {"prefix": prefix, "limit": limit}
    if cache_name:
        args["cache"] = cache_name
    result = app.call("cache.list", args)
    if as_json:
        print_json(result)
        return
    for e in result["entries"]:
        tier = "  (disk)" if e.get("tier") == "disk" else ""
        click.echo(f"{e['cache']}{tier}  {e['status']}  {e['body_bytes']:>10}  age {e['age']:>6}s  ttl {e['ttl']:>6}s  "
                   f"{e['key']}" + "".join(f"  [{k}: {v}]" for k, v in e.get("key_fields", {}).items())
                   + (f"  vary {e['vary']}" if e["vary"] else "")
                   + (f"  tags {' '.join(e['tags'])}" if e["tags"] else ""))
