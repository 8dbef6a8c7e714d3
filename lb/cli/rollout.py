"""`lb rollout`: progressive rollouts of a split's variant, run by the daemon
itself: the canary's weight rises step by step while its error rate and p99
stay within bounds and no worse than the baseline's, and falls back to 0 %
at once when they do not (docs/rollouts.md)."""

import click

from lb.cli.app import App, print_json


@click.group()
def rollout() -> None:
    """Start, watch, pause, resume and abort canary rollouts of the running lb."""


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")(f)


def _pct(x) -> str:
    return "-" if x is None else f"{x * 100:.2f}%"


def rollout_lines(rollouts: list[dict]) -> list[str]:
    lines = []
    for r in rollouts:
        steps = ",".join(str(s) for s in r["steps"])
        lines.append(f"{r['split']}: {r['to']} {r['state']}, step {r['step'] + 1} of {len(r['steps'])} "
                     f"(steps {steps}), now {r.get('weight')}%, from {r['from']}")
        w = r.get("window")
        if w:
            c, b = w["canary"], w["baseline"]
            lines.append(f"  window {w['seconds']:.1f}s of {r['interval']}s: canary {c['requests']} requests, "
                         f"error rate {_pct(c['error_rate'])}, p99 {c['p99_ms'] or '-'}ms; baseline "
                         f"{b['requests']} requests, error rate {_pct(b['error_rate'])}, p99 {b['p99_ms'] or '-'}ms")
        for d in r.get("decisions", [])[-5:]:
            lines.append(f"  {d['verdict']}: {d['text']}")
    return lines


def _print(result: dict, as_json: bool) -> None:
    if as_json:
        print_json(result)
        return
    click.echo("\n".join(rollout_lines(result.get("rollouts") or [result])) or "no rollouts")


@rollout.command()
@click.argument("name")
@click.option("--to", "to", required=True, metavar="POOL", help="The variant to roll out (the canary).")
@click.option("--from", "from_", metavar="POOL",
              help="The variant it takes its weight from (the baseline). Default: the split's first other variant.")
@click.option("--steps", default="5,10,25,50,100", show_default=True, metavar="PERCENTS",
              help="The canary's weights, rising, comma-separated.")
@click.option("--interval", default="60s", show_default=True, metavar="DURATION",
              help="The least time each step lasts.")
@click.option("--max-error-rate", default="1%", show_default=True, metavar="RATE",
              help="The canary's 5xx share over a step's window, at most (1%, 0.01).")
@click.option("--max-p99", default="0s", show_default=True, metavar="DURATION",
              help="The canary's p99 response time over a step's window, at most (0s: no bound).")
@click.option("--min-requests", default=200, show_default=True, type=click.IntRange(min=1),
              help="The canary's requests in a step's window before it is judged.")
@_json_option
@click.pass_obj
def start(app: App, name: str, to: str, from_: str | None, steps: str, interval: str, max_error_rate: str,
          max_p99: str, min_requests: int, as_json: bool) -> None:
    """Roll out variant --to of split NAME: `lb rollout start api --to canary
    --steps 5,10,25,50,100 --interval 60s --max-error-rate 1% --max-p99 500ms
    --min-requests 200`."""
    try:
        step_list = [int(s.strip().rstrip("%")) for s in steps.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{steps!r} is not a list of whole percents", param_hint="--steps") from None
    args = {"name": name, "to": to, "steps": step_list, "interval": interval, "max_error_rate": max_error_rate,
            "max_p99": max_p99, "min_requests": min_requests}
    if from_:
        args["from"] = from_
    _print(app.call("rollout.start", args), as_json)


@rollout.command()
@click.argument("name", required=False)
@_json_option
@click.pass_obj
def status(app: App, name: str | None, as_json: bool) -> None:
    """Every rollout, or split NAME's: its step, the canary's and the
    baseline's figures over the step's window so far, the last decisions."""
    _print(app.call("rollout.status", {"name": name} if name else {}), as_json)


@rollout.command()
@click.argument("name")
@_json_option
@click.pass_obj
def pause(app: App, name: str, as_json: bool) -> None:
    """Hold split NAME's rollout at its step: no promotion, no judgement."""
    _print(app.call("rollout.pause", {"name": name}), as_json)


@rollout.command()
@click.argument("name")
@_json_option
@click.pass_obj
def resume(app: App, name: str, as_json: bool) -> None:
    """Go on with a paused rollout: its step starts a new window."""
    _print(app.call("rollout.resume", {"name": name}), as_json)


@rollout.command()
@click.argument("name")
@_json_option
@click.pass_obj
def abort(app: App, name: str, as_json: bool) -> None:
    """Stop split NAME's rollout and put its canary back to 0%."""
    _print(app.call("rollout.abort", {"name": name}), as_json)
