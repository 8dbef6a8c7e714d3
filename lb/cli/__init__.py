"""The `lb` command: one module per command group, each a thin layer over lb.*."""

import click

from lb import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="lb")
def main():
    """lb: a load balancer with a compiled data path."""


def _register():
    from lb.cli import check, pool, run

    main.add_command(check.check)
    main.add_command(run.run)
    main.add_command(run.demo)
    main.add_command(pool.pool)


_register()
