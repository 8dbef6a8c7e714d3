"""`lb check`: validate a config file exactly as a start or reload would."""

import json
import sys

import click

from lb import config
from lb.cli.app import config_option

EXIT_CONFIG = 2  # the project's exit code for usage and config errors


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _summary(cfg: config.Config) -> dict:
    return {
        "ok": True,
        "source": cfg.source,
        "sha256": cfg.sha256,
        "listeners": len(cfg.listeners),
        "pools": len(cfg.pools),
        "backends": sum(len(pool.backends) for pool in cfg.pools.values()),
        "acls": len(cfg.acls),
        "prefixes": sum(len(acl.entries) for acl in cfg.acls.values()),
        "warnings": list(cfg.warnings),
    }


@click.command()
@config_option("Config file to check")
@click.option("--json", "as_json", is_flag=True, help="Print the result as one JSON object on stdout.")
def check(config_path: str, as_json: bool) -> None:
    """Validate a config file without starting anything.

    Runs every check a start would (host names are resolved, but nothing is
    bound and no user is looked up). Exits 0 when the file is valid, 2 when it
    is not; the error names the offending key, e.g.
    "pools.app.backends[2].address: port out of range".
    """
    try:
        cfg = config.load(config_path)
        config.check_runnable(cfg)
    except config.ConfigError as e:
        if as_json:
            error = {"ok": False, "source": config_path, "error": str(e), "path": e.path, "message": e.message}
            click.echo(json.dumps(error))
        else:
            click.echo(f"error: {e}", err=True)
        sys.exit(EXIT_CONFIG)

    summary = _summary(cfg)
    # the node's kernel settings for [ha]: reported, never a reason to refuse
    # the file (it may be checked on another machine than the one it runs on)
    from lb import ha

    summary["ha"] = [c for c in ha.kernel_checks(cfg) if not c["ok"]]
    if as_json:
        click.echo(json.dumps(summary))
        return
    counts = ", ".join(_plural(summary[key], key[:-1]) for key in ("listeners", "pools", "backends"))
    if cfg.acls:
        counts += f", {_plural(summary['acls'], 'acl')} of {summary['prefixes']} prefixes"
    click.echo(f"{cfg.source}: ok ({counts})")
    for warning in cfg.warnings:
        click.echo(f"warning: {warning}", err=True)
    for c in summary["ha"]:
        click.echo(f"warning: ha: {c['check']}: {c['detail']}" + (f" (fix: {c['fix']})" if c["fix"] else ""),
                   err=True)
