"""The application object of the `lb` command (`ctx.obj`): which daemon to talk
to, one admin connection shared by a command's requests, and the mapping of
docs/admin.md's error codes to exit codes. Also the parameter types that
complete pool, backend and ACL names from the running daemon."""

from __future__ import annotations

import sys

import click
from click.shell_completion import CompletionItem

from lb import admin_client

DEFAULT_CONFIG = "/etc/lb/lb.toml"


def config_option(what: str):
    """`-c/--config FILE` as every command that reads a config file takes it."""
    return click.option("-c", "--config", "config_path", metavar="FILE", default=DEFAULT_CONFIG,
                        show_default=True, envvar="LB_CONFIG",
                        help=f"{what}; the LB_CONFIG environment variable sets it too.")


EXIT_FAILED = 1  # the operation failed (not_found, conflict, failed, denied)
EXIT_USAGE = 2  # usage or config error (invalid, config)
EXIT_UNREACHABLE = 3  # no daemon answers at the socket

EXIT_FOR_CODE = {
    "invalid": EXIT_USAGE,
    "config": EXIT_USAGE,
    "not_found": EXIT_FAILED,
    "conflict": EXIT_FAILED,
    "failed": EXIT_FAILED,
    "denied": EXIT_FAILED,
    "version": EXIT_FAILED,
    "protocol": EXIT_FAILED,
}

# Completion runs on every <Tab>: a daemon that does not answer at once is skipped.
COMPLETION_TIMEOUT = 1.0


def fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def error_text(e: admin_client.AdminError) -> str:
    if e.code == "denied" and "denied" not in e.message.lower():
        return f"permission denied: {e.message}"
    return e.message


class App:
    """Built by the root group from --socket / LB_ADMIN_SOCKET / -c."""

    def __init__(self, socket_path: str | None = None, config_path: str | None = None):
        self.socket_option = socket_path
        self.config_path = config_path
        self._client: admin_client.AdminClient | None = None

    @property
    def socket_path(self) -> str:
        try:
            return admin_client.resolve_socket(self.socket_option, self.config_path)
        except OSError as e:
            fail(f"cannot read {self.config_path}: {e.strerror}", EXIT_USAGE)
        except ValueError as e:
            fail(str(e), EXIT_USAGE)

    @property
    def client(self) -> admin_client.AdminClient:
        if self._client is None:
            self._client = admin_client.AdminClient(self.socket_path)
            click.get_current_context().call_on_close(self._client.close)
        return self._client

    def call(self, cmd: str, args: dict | None = None, timeout: float | None | bool = False,
             notes: dict[str, str] | None = None) -> dict:
        """One verb; a failure is reported on stderr and ends the command with
        its exit code. timeout: see AdminClient.call. notes: a line to add
        after the error, by error code."""
        try:
            return self.client.call(cmd, args, timeout=timeout)
        except (admin_client.DaemonUnreachable, admin_client.AdminError) as e:
            self.report(e, notes)

    @staticmethod
    def report(e: Exception, notes: dict[str, str] | None = None) -> None:
        """End the command for a failed verb: the message on stderr, its exit code."""
        if isinstance(e, admin_client.DaemonUnreachable):
            fail(str(e), EXIT_UNREACHABLE)
        note = (notes or {}).get(e.code)
        fail(error_text(e) + (f"\n{note}" if note else ""), EXIT_FOR_CODE.get(e.code, EXIT_FAILED))


def print_json(result) -> None:
    import json

    click.echo(json.dumps(result))


# ---- completion ------------------------------------------------------------------


def _quiet_call(ctx: click.Context, cmd: str, args: dict | None = None) -> dict | None:
    """A verb for completion: any failure (no daemon, no socket, ...) is None.
    The root group's callback does not run while completing, so the socket is
    found from its parameters here."""
    root = ctx.find_root()
    obj = root.obj if isinstance(root.obj, App) else App(root.params.get("socket_path"),
                                                          root.params.get("config_path"))
    try:
        path = admin_client.resolve_socket(obj.socket_option, obj.config_path)
        return admin_client.call(path, cmd, args, timeout=COMPLETION_TIMEOUT)
    except Exception:
        return None


class PoolName(click.ParamType):
    name = "pool"

    def shell_complete(self, ctx, param, incomplete):
        result = _quiet_call(ctx, "pool.list")
        try:
            names = [p["name"] for p in result["pools"]]
        except (TypeError, KeyError):
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


class BackendName(click.ParamType):
    """A backend of the pool given before it (the `pool` parameter)."""

    name = "backend"

    def shell_complete(self, ctx, param, incomplete):
        pool = ctx.params.get("pool")
        if not pool:
            return []
        result = _quiet_call(ctx, "pool.show", {"pool": pool})
        try:
            names = list(result["backends"])
        except (TypeError, KeyError):
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


class AclName(click.ParamType):
    name = "acl"

    def shell_complete(self, ctx, param, incomplete):
        result = _quiet_call(ctx, "acl.show")
        try:
            names = [a["name"] for a in result["acls"]]
        except (TypeError, KeyError):
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


class LimitName(click.ParamType):
    name = "limit"

    def shell_complete(self, ctx, param, incomplete):
        result = _quiet_call(ctx, "limits.show")
        try:
            names = [lim["name"] for lim in result["limits"]]
        except (TypeError, KeyError):
            return []
        return [CompletionItem(n) for n in names if n.startswith(incomplete)]


POOL = PoolName()
BACKEND = BackendName()
ACL = AclName()
LIMIT = LimitName()
