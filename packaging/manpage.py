"""Write lb(1), the manual page of the `lb` command and every subcommand, from
the click command tree itself, so the page cannot fall behind the CLI.

    python3 packaging/manpage.py OUTPUT        # run from the source tree

Both packages run it at build time (debian/rules, packaging/rpm/lb.spec). It
needs click and the pure-Python part of lb, not the compiled module. The date
is SOURCE_DATE_EPOCH's when set (reproducible builds), else today.
"""

from __future__ import annotations

import datetime
import inspect
import os
import sys

import click

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lb import __version__  # noqa: E402
from lb.cli import main  # noqa: E402

DESCRIPTION = """\
lb is a load balancer for bare metal. A supervisor process forks one worker per
CPU (or global.workers) and a health checker. Each worker is a compiled epoll
loop that accepts client connections on SO_REUSEPORT listening sockets owned by
the supervisor, picks a backend, connects and forwards bytes both ways, by
splice(2) for bulk data. Backend weights, states and counters live in shared
memory.

Started as root, lb binds its listeners and creates its shared memory first,
then runs the workers and the checker as global.user and global.group (lb by
default); the supervisor keeps root only to manage them. The configuration is
one TOML file, /etc/lb/lb.toml by default."""

SIGNALS = [
    ("SIGTERM", "Graceful stop: listening sockets close, open connections finish "
                "(up to global.drain_timeout), then lb exits 0."),
    ("SIGINT, SIGQUIT", "Fast stop: every connection is closed at once."),
    ("SIGHUP", "Reload, as lb reload: the config file is read and validated again; a valid one "
               "starts a new generation of workers on the same listening sockets while the old one "
               "drains, an invalid one is logged and the running config keeps serving. Either way "
               "systemd hears RELOADING=1, then READY=1."),
]

FILES = [
    ("/etc/lb/lb.toml", "The configuration (a documented example in the packages)."),
    ("/lib/systemd/system/lb.service", "The systemd unit (/usr/lib/systemd/system on RPM-based systems)."),
    ("/var/lib/lb", "State directory; the home of the lb system user."),
    ("/run/lb", "Runtime directory (the admin socket)."),
    ("/dev/shm/lb-PID.shm", "Shared memory of the instance whose supervisor is PID; removed at stop."),
]

ENVIRONMENT = [
    ("LB_CONFIG", "Config file for run, check and pool simulate when -c is not given."),
    ("LB_ADMIN_SOCKET", "Admin socket of the running lb, for the commands that talk to it "
                        "(as lb --socket)."),
    ("NOTIFY_SOCKET", "Set by systemd for Type=notify services: lb sends READY=1 once its "
                      "workers run, RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a "
                      "reload, STOPPING=1 when a stop begins. Without it lb runs the same."),
]

EXIT_STATUS = [
    ("0", "Success; for run, a stop by signal."),
    ("1", "The operation failed; for run, lb could not start (a listener cannot be bound, "
          "the account to run as is missing, ...)."),
    ("2", "Usage or configuration error; the message names the key, e.g. "
          "pools.app.backends[2].address: port out of range."),
    ("3", "For the commands that talk to a running lb: it is not reachable."),
]


def escape(text: str) -> str:
    """Text for a troff line: backslashes and leading control characters quoted."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in text.split("\n"))


def paragraphs(text: str) -> list[str]:
    text = inspect.cleandoc(text or "")
    return [" ".join(p.split()) for p in text.split("\n\n") if p.strip()]


def commands(group: click.Group, ctx: click.Context):
    """(context, command) for every leaf command, depth first, by name."""
    for name in sorted(group.list_commands(ctx)):
        cmd = group.get_command(ctx, name)
        sub = click.Context(cmd, info_name=name, parent=ctx)
        if isinstance(cmd, click.Group):
            yield from commands(cmd, sub)
        else:
            yield sub, cmd


def render_command(ctx: click.Context, cmd: click.Command) -> list[str]:
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out = [f'.SS "{escape(ctx.command_path)} {escape(usage)}"']
    for i, para in enumerate(paragraphs(cmd.help)):
        out += ([] if i == 0 else [".PP"]) + [escape(para)]
    for param in cmd.params:
        record = param.get_help_record(ctx)
        if record is None:
            continue
        opts, help_text = record
        out += [".TP", f"\\fB{escape(opts)}\\fR", escape(" ".join(help_text.split()))]
    return out


def render_list(items) -> list[str]:
    out = []
    for term, text in items:
        out += [".TP", f"\\fB{escape(term)}\\fR", escape(text)]
    return out


def render() -> str:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) or None
    day = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc) if epoch else datetime.datetime.now()
    root = click.Context(main, info_name="lb")
    out = [
        '.\\" Generated by packaging/manpage.py from the click commands of lb; do not edit.',
        f'.TH LB 1 "{day:%Y-%m-%d}" "lb {__version__}" "User Commands"',
        ".SH NAME",
        "lb \\- load balancer with a compiled data path",
        ".SH SYNOPSIS",
        ".B lb",
        "[\\fB\\-h\\fR|\\fB\\-\\-help\\fR] [\\fB\\-\\-version\\fR]",
        ".br",
        ".B lb",
        "[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fICOMMAND OPTIONS\\fR] [\\fIARGUMENTS\\fR]",
        ".SH DESCRIPTION",
    ]
    for i, para in enumerate(DESCRIPTION.split("\n\n")):
        out += ([] if i == 0 else [".PP"]) + [escape(" ".join(para.split()))]
    out += [".SH OPTIONS", "Options of lb itself, before the command:"]
    for param in main.params:
        record = param.get_help_record(root)
        if record is not None:
            out += [".TP", f"\\fB{escape(record[0])}\\fR", escape(" ".join(record[1].split()))]
    out += [".TP", "\\fB\\-h\\fR, \\fB\\-\\-help\\fR",
            "Print help and exit; after a command, that command's help.",
            ".SH COMMANDS"]
    for ctx, cmd in commands(main, root):
        out += render_command(ctx, cmd)
    out += [".SH SIGNALS", "Signals to the supervisor of lb run:"]
    out += render_list(SIGNALS)
    out += [".SH SYSTEMD",
            escape("The packages install lb.service (Type=notify, hardened). Edit /etc/lb/lb.toml, "
                   "check it with lb check, then start it with systemctl enable --now lb. "
                   "systemctl reload lb sends SIGHUP; systemctl stop lb stops gracefully.")]
    out += [".SH FILES"] + render_list(FILES)
    out += [".SH ENVIRONMENT"] + render_list(ENVIRONMENT)
    out += [".SH EXIT STATUS"] + render_list(EXIT_STATUS)
    out += [".SH SEE ALSO",
            "\\fBsystemctl\\fR(1), \\fBsystemd.service\\fR(5), \\fBsplice\\fR(2);",
            escape("every configuration key: /usr/share/doc/lb/configuration.md; the admin protocol: "
                   "/usr/share/doc/lb/admin.md.")]
    return "\n".join(out) + "\n"


def main_() -> None:
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT")
    with open(sys.argv[1], "w", encoding="utf-8") as f:
        f.write(render())


if __name__ == "__main__":
    main_()
