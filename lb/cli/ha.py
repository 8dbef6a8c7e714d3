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
    it again after every change to [ha]. bird: not in this build yet.
    """
    from lb import ha as ha_mod

    cfg = _load(config_path)
    if engine == "bird":
        fail("ha.mode: BGP announcements through BIRD are not in this build yet (docs/ha.md)", EXIT_USAGE)
    if cfg.ha.mode != "vrrp":
        fail(f'ha.mode: is "{cfg.ha.mode}" in {cfg.source}; a keepalived config needs mode = "vrrp"', EXIT_USAGE)
    text = ha_mod.render_keepalived(cfg)
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o640)  # it may hold the VRRP password
        os.replace(tmp, output)
    except OSError as e:
        fail(f"cannot write {output}: {e.strerror}", EXIT_FAILED)
    click.echo(f"{output}: keepalived config for virtual router {cfg.ha.virtual_router_id} written", err=True)


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
