"""The `lb` command: one module per command group, each a thin layer over lb.*."""

import click

from lb import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lb")
@click.option("--socket", "socket_path", metavar="PATH", envvar="LB_ADMIN_SOCKET",
              help="Admin socket of the lb to talk to; the LB_ADMIN_SOCKET environment variable sets it too. "
                   "Default: global.admin_socket of the -c file, else /run/lb/admin.sock.")
@click.option("-c", "--config", "config_path", metavar="FILE",
              help="Find the admin socket in this config file (its global.admin_socket).")
@click.pass_context
def main(ctx: click.Context, socket_path: str | None, config_path: str | None):
    """lb: a load balancer with a compiled data path.

    Exit codes of the commands that talk to a running lb: 0 done, 1 the
    operation failed, 2 usage or config error, 3 lb is not reachable."""
    from lb.cli.app import App

    ctx.obj = App(socket_path, config_path)


def _register():
    from lb.cli import (acl, backend, cache, cert, check, control, ha, key, limits, logs, node, pool, rollout, run,
                        split, stats, status, top)

    main.add_command(check.check)
    main.add_command(run.run)
    main.add_command(run.demo)
    main.add_command(pool.pool)
    main.add_command(backend.backend)
    main.add_command(status.status)
    main.add_command(stats.stats)
    main.add_command(top.top)
    main.add_command(control.reload)
    main.add_command(control.stop)
    main.add_command(cert.cert)
    main.add_command(acl.acl)
    main.add_command(limits.limits)
    main.add_command(key.key)
    main.add_command(logs.logs)
    main.add_command(ha.ha)
    main.add_command(node.node)
    main.add_command(cache.cache)
    main.add_command(split.split)
    main.add_command(rollout.rollout)


_register()
