"""`lb ha`: this node in a cluster behind virtual IPs (docs/ha.md). Both
commands read a config file and need no daemon: `render` writes the engine's
config from [ha], `check` reports the kernel settings the node needs."""

import json
import os
import sys

import click

from lb import config
from lb.cli.app import EXIT_FAILED, EXIT_USAGE, config_option, fail


def _load(config_path: str) -> config.Config:
    try:
        cfg = config.load(config_path)
        config.check_runnable(cfg)
    except config.ConfigError as e:
        fail(str(e), EXIT_USAGE)
    return cfg


@click.group()
def ha() -> None:
    """This node behind virtual IPs: engine configs and kernel checks."""


@ha.command()
@click.argument("engine", type=click.Choice(["keepalived", "bird"]))
@config_option("Config file with the [ha] section")
@click.option("-o", "--output", metavar="PATH",
              help="Write the config here (write + rename) instead of printing it.")
def render(engine: str, config_path: str, output: str | None) -> None:
    """Print (or write) ENGINE's config for this node from [ha].

    keepalived: a vrrp_instance with the VIPs, tracking lb's health file
    (ha.health_file) so that an unhealthy or drained lb gives the VIPs up.
    Run keepalived with it (docs/ha.md shows the systemd drop-in), and render
    it again after every change to [ha].

    bird: a BIRD 2 config announcing the VIPs as host routes to the BGP
    neighbors (with BFD), from the routes lb keeps in ha.announce_table
    while the node is healthy and in service.
    """
    from lb import ha as ha_mod

    cfg = _load(config_path)
    want = "vrrp" if engine == "keepalived" else "bgp"
    if cfg.ha.mode != want:
        fail(f'ha.mode: is "{cfg.ha.mode}" in {cfg.source}; a {engine} config needs mode = "{want}"', EXIT_USAGE)
    text = ha_mod.render_keepalived(cfg) if engine == "keepalived" else ha_mod.render_bird(cfg)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        # keepalived's may hold the VRRP password; BIRD's holds no secret and
        # BIRD re-reads it as its own user (`birdc configure`)
        os.chmod(tmp, 0o640 if engine == "keepalived" else 0o644)
        os.replace(tmp, output)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror}", EXIT_FAILED)
    if engine == "keepalived":
        click.echo(f"{output}: keepalived config for virtual router {cfg.ha.virtual_router_id} written", err=True)
    else:
        click.echo(f"{output}: BIRD config announcing {len(cfg.ha.vips)} VIP(s) to "
                   f"{len(cfg.ha.neighbors)} neighbor(s) written", err=True)


@ha.command()
@config_option("Config file with the [ha] section")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as one JSON object on stdout.")
def check(config_path: str, as_json: bool) -> None:
    """Report each kernel setting this node has wrong for [ha], with the
    command that fixes it. Exits 0 when every check passes, 1 otherwise."""
    from lb import ha as ha_mod

    cfg = _load(config_path)
    checks = ha_mod.kernel_checks(cfg)
    ok = all(c["ok"] for c in checks)
    if as_json:
        click.echo(json.dumps({"ok": ok, "mode": cfg.ha.mode, "checks": checks}))
    else:
        if not cfg.ha.enabled:
            click.echo(f'{cfg.source}: ha.mode is "none": nothing to check')
        for c in checks:
            line = f"{'ok  ' if c['ok'] else 'FAIL'} {c['check']}: {c['detail']}"
            if not c["ok"] and c["fix"]:
                line += f"\n     fix: {c['fix']}"
            click.echo(line)
    if not ok:
        sys.exit(EXIT_FAILED)
