"""`lb acl`: the ACLs ([acls.NAME]) of the running daemon, changed live. Every
change is in force at the workers' next lookup, without a reload, and is kept
in global.state_file, so a restart or reload keeps it. `show -c FILE` reads a
config file instead of asking the daemon."""

import os
import sys

import click

from lb import config
from lb.cli import render
from lb.cli.app import ACL, EXIT_USAGE, App, print_json


@click.group()
def acl() -> None:
    """Show and change the ACLs (prefix lists) of the running lb."""


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")(f)


@acl.command()
@click.argument("name", required=False, type=ACL)
@click.argument("address", required=False)
@click.option("--prefixes", is_flag=True, help="List every prefix of the ACL (a million lines for a million).")
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Read the ACLs of this config file instead of asking the running lb (no counters then).")
@_json_option
@click.pass_obj
def show(app: App, name: str | None, address: str | None, prefixes: bool, config_path: str | None,
         as_json: bool) -> None:
    """Every ACL, or ACL NAME: its IPv4 and IPv6 prefix counts, where they come
    from, and the allow/deny rules that use it with their decisions. With
    ADDRESS, whether that address is in the ACL and which prefix decides it
    (the longest that covers it; "!" marks an exclusion)."""
    if config_path:
        result = _show_from_config(config_path, name, address, prefixes)
    else:
        args = {}
        if name is not None:
            args["name"] = name
        if address is not None:
            args["address"] = address
        if prefixes:
            args["prefixes"] = True
        result = app.call("acl.show", args)
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(render.acl_lines(result.get("acls") or [])))


def _show_from_config(path: str, name: str | None, address: str | None, prefixes: bool) -> dict:
    from lb.control.acl import address_verdict

    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_USAGE)
    if name is not None and name not in cfg.acls:
        click.echo(f"error: {path} has no ACL {name!r} (ACLs: {', '.join(cfg.acls) or 'none'})", err=True)
        sys.exit(1)
    rules = config.access_rules(cfg.listeners)
    out = []
    for acl_name, a in cfg.acls.items():
        if name is not None and acl_name != name:
            continue
        item = {"name": acl_name, "ipv4": a.ipv4, "ipv6": a.ipv6, "generation": None,
                "config": {"cidrs": len(a.cidrs), "file": a.file or None},
                "rules": [{**r, "count": None} for r in rules if r["acl"] == acl_name]}
        if address is not None:
            try:
                item["address"] = address_verdict(a.entries, address)
            except Exception as e:  # AdminError: the address is not one
                click.echo(f"error: {getattr(e, 'message', e)}", err=True)
                sys.exit(EXIT_USAGE)
        if prefixes:
            item["prefixes"] = a.entries.prefixes()
        out.append(item)
    return {"acls": out}


def _change(app: App, verb: str, name: str, prefixes: tuple[str, ...], as_json: bool) -> None:
    result = app.call(verb, {"name": name, "prefixes": list(prefixes)})
    if as_json:
        print_json(result)
        return
    done = "added" if verb == "acl.add" else "removed"
    changed = result.get("changed") or []
    unchanged = result.get("unchanged") or []
    click.echo(f"acl {result.get('name', name)}: {done} {len(changed)} "
               f"({result.get('ipv4')} IPv4, {result.get('ipv6')} IPv6 prefixes now)")
    if unchanged:
        what = "already there" if verb == "acl.add" else "not there"
        click.echo(f"{what}: {', '.join(unchanged)}", err=True)


@acl.command()
@click.argument("name", type=ACL)
@click.argument("prefixes", nargs=-1, required=True, metavar="PREFIX...")
@_json_option
@click.pass_obj
def add(app: App, name: str, prefixes: tuple[str, ...], as_json: bool) -> None:
    """Add PREFIX... to ACL NAME ("10.0.0.0/8", "2001:db8::/32", an address;
    "!10.1.0.0/16" excludes). In force within milliseconds, no reload."""
    _change(app, "acl.add", name, prefixes, as_json)


@acl.command()
@click.argument("name", type=ACL)
@click.argument("prefixes", nargs=-1, required=True, metavar="PREFIX...")
@_json_option
@click.pass_obj
def remove(app: App, name: str, prefixes: tuple[str, ...], as_json: bool) -> None:
    """Remove PREFIX... from ACL NAME, written as they are in it ("!" for an
    exclusion). Exit code 1 when the ACL held none of them."""
    _change(app, "acl.remove", name, prefixes, as_json)


@acl.command()
@click.argument("name", type=ACL)
@click.argument("file", type=click.Path(dir_okay=False))
@_json_option
@click.pass_obj
def load(app: App, name: str, file: str, as_json: bool) -> None:
    """Replace the prefixes of ACL NAME with those of FILE (one a line, '#'
    comments), at once. The daemon reads FILE, and reads it again at a
    restart; a bad line changes nothing (the error names it)."""
    result = app.call("acl.load", {"name": name, "file": os.path.abspath(file)})
    if as_json:
        print_json(result)
        return
    click.echo(f"acl {result.get('name', name)}: {result.get('ipv4')} IPv4 and {result.get('ipv6')} IPv6 prefixes "
               f"from {os.path.abspath(file)}")
