"""`lb pool simulate`: preview of a pool change, checked against the reference tables."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from lb.cli import main
from tests.reference import select_ref

KEYS = ("moved_fraction", "unforced_moved_fraction", "max_over_avg_before", "max_over_avg_after", "shares")


def write_config(tmp_path, backends, algorithm="maglev", table_size=65537):
    """backends: (address, name or None, weight, backup)."""
    lines = [
        "[listeners.t]",
        'bind = ["127.0.0.1:9000"]',
        'mode = "tcp"',
        'pool = "app"',
        "",
        "[pools.app]",
        f'algorithm = "{algorithm}"',
    ]
    if algorithm == "maglev":
        lines.append(f"table_size = {table_size}")
    for address, name, weight, backup in backends:
        lines += ["[[pools.app.backends]]", f'address = "{address}"', f"weight = {weight}"]
        if name:
            lines.append(f'name = "{name}"')
        if backup:
            lines.append("backup = true")
    path = tmp_path / "lb.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def addresses(n):
    return [f"10.0.{i // 250}.{i % 250 + 1}:8080" for i in range(n)]


def run(*args):
    result = CliRunner().invoke(main, ["pool", "simulate", *args])
    return result.exit_code, result.output, result.stderr


def simulate_json(*args):
    code, out, err = run(*args, "--json")
    assert code == 0, err
    report = json.loads(out)
    assert all(key in report for key in KEYS)
    return report


def test_removing_one_of_100_maglev_backends(tmp_path):
    names = addresses(100)
    path = write_config(tmp_path, [(a, None, 100, False) for a in names])
    report = simulate_json("-c", path, "app", "--remove", names[42])

    m = 65537
    before = select_ref.maglev_table(names, [100] * 100, m)
    rest = names[:42] + names[43:]
    after = select_ref.maglev_table(rest, [100] * 99, m)
    old = [names[i] for i in before]
    new = [rest[i] for i in after]
    moved = sum(a != b for a, b in zip(old, new))
    unforced = sum(a != b and a != names[42] for a, b in zip(old, new))
    assert report["moved_fraction"] == pytest.approx(moved / m)
    assert report["unforced_moved_fraction"] == pytest.approx(unforced / m)
    assert report["moved_fraction"] <= 0.017
    assert 0 <= report["unforced_moved_fraction"] <= report["moved_fraction"]

    shares = report["shares"]
    assert set(shares) == set(names)
    assert shares[names[42]][1] == 0
    assert sum(b for b, _ in shares.values()) == pytest.approx(1)
    assert sum(a for _, a in shares.values()) == pytest.approx(1)
    assert shares[names[0]][0] == pytest.approx(old.count(names[0]) / m)
    assert 1 <= report["max_over_avg_before"] <= 1.002
    assert 1 <= report["max_over_avg_after"] <= 1.002


def test_add_and_reweight_maglev(tmp_path):
    path = write_config(
        tmp_path,
        [("10.0.0.1:80", "a", 100, False), ("10.0.0.2:80", "b", 100, False), ("10.0.0.3:80", "c", 300, True)],
        table_size=1009,
    )
    report = simulate_json("-c", path, "app", "--add", "10.0.0.9:80=200", "--weight", "a=300", "--weight", "b=0")
    names_before, names_after = ["a", "b"], ["a", "b", "10.0.0.9:80"]
    old = [names_before[i] for i in select_ref.maglev_table(names_before, [100, 100], 1009)]
    new = [names_after[i] for i in select_ref.maglev_table(names_after, [300, 0, 200], 1009)]
    moved = sum(x != y for x, y in zip(old, new))
    unforced = sum(x != y and x == "a" for x, y in zip(old, new))  # b takes no traffic after the change
    assert report["moved_fraction"] == pytest.approx(moved / 1009)
    assert report["unforced_moved_fraction"] == pytest.approx(unforced / 1009)
    assert report["shares"]["c"] == [0, 0]  # a backup takes no traffic while a primary does
    assert report["shares"]["10.0.0.9:80"][0] == 0
    assert report["shares"]["b"][1] == 0
    assert report["shares"]["a"][1] == pytest.approx(new.count("a") / 1009)
    # by address, too
    by_address = simulate_json("-c", path, "app", "--remove", "10.0.0.1:80")
    assert by_address["shares"]["a"][1] == 0


def test_non_hash_pool_reports_weight_shares(tmp_path):
    path = write_config(
        tmp_path, [("10.0.0.1:80", "a", 100, False), ("10.0.0.2:80", "b", 300, False)], algorithm="roundrobin"
    )
    report = simulate_json("-c", path, "app", "--weight", "a=300", "--add", "10.0.0.3:80")
    assert report["moved_fraction"] is None and report["unforced_moved_fraction"] is None
    assert report["shares"]["a"] == pytest.approx([0.25, 300 / 700])
    assert report["shares"]["b"] == pytest.approx([0.75, 300 / 700])
    assert report["shares"]["10.0.0.3:80"] == pytest.approx([0, 100 / 700])
    assert report["max_over_avg_before"] == pytest.approx(1.5)
    assert report["max_over_avg_after"] == pytest.approx(300 / (700 / 3))


def test_human_output(tmp_path):
    names = addresses(4)
    path = write_config(tmp_path, [(a, None, 100, False) for a in names], table_size=1009)
    code, out, _ = run("-c", path, "app", "--remove", names[3])
    assert code == 0
    assert "moved:" in out and "not forced:" in out and "max/avg" in out
    assert names[3] in out and "removed" in out


def test_errors(tmp_path):
    path = write_config(tmp_path, [("10.0.0.1:80", "a", 100, False)])
    code, _, err = run("-c", path, "nope")
    assert code == 2 and "no pool 'nope'" in err and "app" in err
    code, _, err = run("-c", path, "app", "--remove", "zz")
    assert code == 2 and err.startswith("error: --remove zz")
    code, _, err = run("-c", path, "app", "--add", "10.0.0.2:80=1001")
    assert code == 2 and "out of range" in err
    code, _, err = run("-c", path, "app", "--add", "10.0.0.1:80")
    assert code == 2 and "already in the pool" in err
    code, _, err = run("-c", path, "app", "--weight", "a")
    assert code == 2 and "NAME=WEIGHT" in err

    bad = tmp_path / "bad.toml"
    bad.write_text('[pools.app]\nalgorithm = "maglev"\ntable_size = 65536\n')
    code, _, err = run("-c", str(bad), "app")
    assert code == 2
    assert err.startswith("error: pools.app.table_size: 65536 is not prime")
    code, _, err = run("-c", str(tmp_path / "missing.toml"), "app")
    assert code == 2 and err.startswith("error: ") and "missing.toml" in err
