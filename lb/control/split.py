"""`split.show` and `split.set` (lb/cli/split.py): the weighted splits of the
generation in force, changed live. A change moves the fewest users it can
(lb/splits.py), is written into the half of the split's table the workers do
not read and flipped to: the workers' next request sees it, without a reload.
It is recorded in the state file before the client hears back, and replayed
over every new generation (apply_state).

The state file keeps, per split, its variants' pools, the weights in force,
the config's weights they were set over, and the table itself (as runs): a
restart then keeps every user in their variant. When the config's weights
change (an edited file, then a reload or restart), the config wins, reached
from the table in force by the same fewest moves."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from lb import metrics as metrics_mod
from lb import splits as layout
from lb._fastpath import split_publish, split_read
from lb.admin import AdminError
from lb.config.splits import check_weights, config_splits
from lb.control.backend import save_state
from lb.state import StateFile

if TYPE_CHECKING:
    from lb.supervisor import Generation

log = logging.getLogger("lb")


def _entries(state: StateFile) -> dict:
    splits = state.data.setdefault("splits", {})
    if not isinstance(splits, dict):
        log.warning("state file %s: its splits entry is not a table; ignored", state.path)
        splits = state.data["splits"] = {}
    return splits


def record(state: StateFile, split, weights, table) -> None:
    _entries(state)[split.name] = {"pools": list(split.pools), "weights": list(weights),
                                   "config": list(split.weights), "table": layout.to_runs(table)}


def apply_state(state: StateFile, gen: Generation, previous: Generation | None) -> None:
    """The layout of every split of a new generation: the state file's (a
    runtime change, a restart), else the previous generation's (a reload),
    else the config's; moved to the config's weights when those changed
    since. Published before any worker of the generation runs."""
    gen.splits = {}
    entries = _entries(state)
    changed = False
    for index, split in enumerate(config_splits(gen.config.listeners)):
        n = len(split.pools)
        table = weights = None
        base = list(split.weights)  # the config weights the layout in force was set over
        entry = entries.get(split.name)
        if isinstance(entry, dict) and entry.get("pools") == list(split.pools):
            table = layout.from_runs(entry.get("table") or [], n)
            if table is None or check_weights(entry.get("weights"), split.pools):
                log.warning("state file: split %r: its table is not one of %d variants; the config's is used",
                            split.name, n)
                table = None
            else:
                weights, base = list(entry["weights"]), entry.get("config")
        elif entry is not None:
            log.warning("state file: split %r has other variants in the config now; its runtime weights are skipped",
                        split.name)
        if table is None and previous is not None and split.name in getattr(previous, "splits", {}):
            old = previous.splits[split.name]
            if old["pools"] == list(split.pools):
                table, weights, base = bytearray(old["table"]), list(old["weights"]), old["config"]
        if table is None:
            table, weights = layout.initial(split.weights), list(split.weights)
        if base != list(split.weights):
            log.info("split %s: the config's weights changed to %s; they replace %s", split.name,
                     _text(split.pools, split.weights), _text(split.pools, weights))
            table, weights = layout.move(table, split.weights), list(split.weights)
        if entry is not None or table != layout.initial(weights):
            record(state, split, weights, table)
            changed = True
        gen.splits[split.name] = {"index": index, "split": split, "pools": list(split.pools),
                                  "weights": weights, "config": list(split.weights), "table": table}
        split_publish(gen.shm, index, weights, table)
    if changed:
        try:
            state.save()
        except OSError as e:
            log.warning("state file %s: cannot save the splits' layouts: %s", state.path, e)


def _text(pools, weights) -> str:
    return " ".join(f"{p}={w}" for p, w in zip(pools, weights))


def split_arg(sup, args: dict) -> dict:
    name = args.get("name")
    if not isinstance(name, str):
        raise AdminError("invalid", "argument 'name' (a split: its route's or listener's name) is required")
    s = sup.gen.splits.get(name)
    if s is None:
        known = ", ".join(sup.gen.splits) or "none"
        raise AdminError("not_found", f"no split {name!r} (splits: {known})")
    return s


def parse_weights(s: dict, given: dict) -> list[int]:
    """The weights of every variant from POOL=WEIGHT pairs; with one variant
    left out, it takes what the others leave of 100."""
    if not isinstance(given, dict) or not given:
        raise AdminError("invalid", "argument 'weights' (POOL=WEIGHT ...) is required")
    pools = s["pools"]
    for pool, w in given.items():
        if pool not in pools:
            raise AdminError("invalid", f"{pool!r} is not a variant of split {s['split'].name!r} "
                                        f"(variants: {', '.join(pools)})")
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 100:
            raise AdminError("invalid", f"{pool}={w!r}: a weight is a whole percent 0..100")
    missing = [p for p in pools if p not in given]
    if len(missing) > 1:
        raise AdminError("invalid", f"give the weights of all but one variant: {', '.join(missing)} are missing")
    if missing:
        rest = 100 - sum(given.values())
        if rest < 0:
            raise AdminError("invalid", f"the weights given sum to {sum(given.values())}, more than 100")
        given = {**given, missing[0]: rest}
    weights = [given[p] for p in pools]
    why = check_weights(weights, pools)
    if why:
        raise AdminError("invalid", why)
    return weights


def set_weights(sup, s: dict, weights: list[int], why: str = "") -> None:
    """Writer of a split's layout at run time (lb split set, rollouts)."""
    table = layout.move(s["table"], weights)
    record(sup.state, s["split"], weights, table)
    save_state(sup.state)
    split_publish(sup.gen.shm, s["index"], weights, table)
    before = s["weights"]
    s["weights"], s["table"] = list(weights), table
    log.info("split %s: %s (was %s)%s", s["split"].name, _text(s["pools"], weights), _text(s["pools"], before),
             f": {why}" if why else "")


def set_(sup, args: dict) -> dict:
    from lb.control.rollout import active_rollouts  # (it imports this module)

    s = split_arg(sup, args)
    rollout = active_rollouts(sup).get(s["split"].name)
    if rollout is not None and rollout.get("state") in ("running", "paused"):
        raise AdminError("failed", f"split {s['split'].name!r} is in a rollout ({rollout['state']}): "
                                   "lb rollout abort it first")
    weights = parse_weights(s, args.get("weights"))
    set_weights(sup, s, weights, "lb split set")
    return describe(sup, s)


def describe(sup, s: dict, cur=None) -> dict:
    split = s["split"]
    history = getattr(sup, "metrics_history", None)
    if cur is None and history is not None:
        cur = history.now(sup)
    live = split_read(sup.gen.shm, s["index"])
    variants = []
    for pool, w, cw in zip(s["pools"], live["weights"], s["config"]):
        figures = metrics_mod.entity_stats(("variant", split.name, pool), cur, history.samples) if cur else {}
        variants.append({"pool": pool, "weight": w, "config_weight": cw,
                         **{k: figures.get(k) for k in ("requests", "5xx", "rate", "p50_ms", "p99_ms")}})
    return {"name": split.name, "sticky": split.sticky, "override": split.override,
            "override_allow": list(split.override_allow), "generation": live["generation"],
            "variants": variants}


def show(sup, args: dict) -> dict:
    if args.get("name") is not None:
        return {"splits": [describe(sup, split_arg(sup, args))]}
    history = getattr(sup, "metrics_history", None)
    cur = history.now(sup) if history is not None else None
    return {"splits": [describe(sup, s, cur) for s in sup.gen.splits.values()]}
