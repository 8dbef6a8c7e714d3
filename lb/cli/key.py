"""`lb key`: the API keys of an [auth.NAME] (type = "api_key") of the running
daemon, changed without a reload: in force for the next request once the
command returns, and kept in the auth's keys_file."""

import click

from lb.cli.app import App, print_json


@click.group()
def key() -> None:
    """Add, revoke and list API keys of the running lb."""


def _json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print the daemon's answer as JSON on stdout.")(f)


@key.command()
@click.argument("auth")
@click.argument("identity")
@click.option("--key", "key_text", metavar="KEY",
              help="Use this key (16..1024 printable characters) instead of one lb makes.")
@_json_option
@click.pass_obj
def add(app: App, auth: str, identity: str, key_text: str | None, as_json: bool) -> None:
    """Add a key for IDENTITY to AUTH. Without --key, lb makes one (32 random
    bytes, base64url) and prints it: this is the only time it is shown, lb
    keeps its SHA-256 alone."""
    args = {"auth": auth, "identity": identity}
    if key_text is not None:
        args["key"] = key_text
    result = app.call("key.add", args)
    if as_json:
        print_json(result)
        return
    if "key" in result:
        click.echo(result["key"])
    click.echo(f"auth {result['auth']}: key {result['sha256'][:12]}... for {result['identity']} "
               f"({result['keys']} keys)", err="key" in result)


@key.command()
@click.argument("auth")
@click.argument("identity", required=False)
@click.option("--sha256", metavar="HEX", help="Revoke the one key whose SHA-256 starts with HEX (8 digits or more).")
@_json_option
@click.pass_obj
def revoke(app: App, auth: str, identity: str | None, sha256: str | None, as_json: bool) -> None:
    """Revoke every key of IDENTITY in AUTH (or the one key --sha256 names).
    Requests with it are refused from the next one on."""
    if (identity is None) == (sha256 is None):
        raise click.UsageError("give an IDENTITY or --sha256, not both")
    args = {"auth": auth, "identity": identity} if identity is not None else {"auth": auth, "sha256": sha256}
    result = app.call("key.revoke", args)
    if as_json:
        print_json(result)
        return
    for k in result["revoked"]:
        click.echo(f"revoked {k['sha256'][:12]}... of {k['identity']}")


@key.command(name="list")
@click.argument("auth")
@_json_option
@click.pass_obj
def list_(app: App, auth: str, as_json: bool) -> None:
    """The keys of AUTH: identity and SHA-256 (never the keys), and the
    requests it saw: with a known key, without a key, with an unknown one."""
    result = app.call("key.list", {"auth": auth})
    if as_json:
        print_json(result)
        return
    c = result.get("counts") or {}
    click.echo(f"auth {result['auth']} ({result['keys_file']}): {c.get('ok')} accepted, "
               f"{c.get('missing')} without a key, {c.get('invalid')} with an unknown key")
    for k in result["keys"]:
        click.echo(f"{k['sha256']}  {k['identity']}")
