"""Decision microbenchmark: credential parse, target check, table lookup, policy; no I/O.

Run: python -m benchmarks.decision [--keys 1000000] [--rules 500]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import random
import statistics
import time
from collections.abc import Iterator

from gateway.keys import keyformat as keys
from gateway.keys.table import KeyTable
from gateway.policy.rules import Policy, policy_from_data
from gateway.proxy import auth, credentials, decision
from gateway.store.base import AuthRow

ROLE_COUNT = 50


def build_policy(rule_count: int, seed: int = 7) -> Policy:
    """Return a policy of ROLE_COUNT roles sharing `rule_count` rules of 1Integrate shape."""
    rng = random.Random(seed)
    kinds = ["rules", "datastores", "actions", "actionmaps", "sessions", "results"]
    methods = ["GET", "PUT", "POST", "DELETE", "GET,PUT", "*"]
    roles: dict[str, dict[str, list[str]]] = {f"role{i}": {"allow": []} for i in range(ROLE_COUNT)}
    for index in range(rule_count):
        kind = rng.choice(kinds)
        depth = rng.randint(0, 3)
        parts = [rng.choice([f"f{rng.randint(0, 40)}", "*"]) for _ in range(depth)]
        tail = rng.choice(["**", "*", f"obj{rng.randint(0, 99)}"])
        path = "/".join(["", "1Integrate", "rest", kind, *parts, tail])
        roles[f"role{index % ROLE_COUNT}"]["allow"].append(f"{rng.choice(methods)} {path}")
    data = {"roles": roles, "protected": ["/1Integrate/rest/apikeys/**"]}
    return policy_from_data(data, "<benchmark>")


def build_table(count: int, probe_keys: list[str]) -> KeyTable:
    """Return a table of `count` keys; the probe keys are real, the rest random digests."""
    table = KeyTable()
    role_sets = [tuple(sorted({f"role{i}", f"role{(i * 7) % ROLE_COUNT}"})) for i in range(20)]

    def rows() -> Iterator[AuthRow]:
        for index in range(count):
            if index < len(probe_keys):
                digest = keys.digest(probe_keys[index])
            else:
                digest = hashlib.sha256(os.urandom(16)).digest()
            yield (
                digest,
                index + 1,
                f"key-{index:07d}",
                role_sets[index % 20],
                "active",
                None,
                None,
                None,
                None,
            )

    loader = table.loader()
    loader.add(rows())
    loader.finish(0)
    return table


def decide(
    table: KeyTable, policy: Policy, api_key: list[str], method: str, target: str, now: float
) -> bool:
    """One full decision as the proxy makes it (minus the aiohttp request object)."""
    credential = credentials.extract_credential(api_key, ())
    caller = decision.caller_of(table, credential, now)
    return decision.decide(policy, method, target, caller) is None


def main() -> None:
    """Build the table and policy, then time decisions in batches and print the median."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--rules", type=int, default=500)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=1000)
    args = parser.parse_args()

    probes = [keys.generate_key() for _ in range(1000)]
    started = time.perf_counter()
    table = build_table(args.keys, probes)
    policy = build_policy(args.rules)
    print(f"table: {len(table):,} keys, policy: {args.rules} rules in {ROLE_COUNT} roles "
          f"(built in {time.perf_counter() - started:.1f}s)")  # fmt: skip
    rng = random.Random(1)
    paths = [
        "/1Integrate/rest/sessions/f3/obj10",
        "/1Integrate/rest/rules/f12/f7/thing",
        "/1Integrate/rest/datastores/f1",
        "/1Integrate/rest/results/f9/obj3/status",
        "/1Integrate/rest/apikeys/5",
    ]
    cases = [
        ([rng.choice(probes)], rng.choice(["GET", "PUT"]), rng.choice(paths))
        for _ in range(args.batch_size)
    ]
    now = time.time()
    allowed = sum(decide(table, policy, k, m, p, now) for k, m, p in cases)
    gc.collect()
    gc.disable()
    per_call: list[float] = []
    for _ in range(args.batches):
        begin = time.perf_counter_ns()
        for api_key, method, path in cases:
            decide(table, policy, api_key, method, path, now)
        per_call.append((time.perf_counter_ns() - begin) / len(cases) / 1000)
    # Cold: every decision is a key's first request (no recent-digest cache hit).
    cold_cases = [([probe], "GET", paths[index % len(paths)]) for index, probe in enumerate(probes)]
    cold: list[float] = []
    for _ in range(args.batches // 4):
        auth.probe_of.cache_clear()
        begin = time.perf_counter_ns()
        for api_key, method, path in cold_cases:
            decide(table, policy, api_key, method, path, now)
        cold.append((time.perf_counter_ns() - begin) / len(cold_cases) / 1000)
    gc.enable()
    unknown = [keys.generate_key() for _ in range(args.batch_size)]
    begin = time.perf_counter_ns()
    for key in unknown:
        decide(table, policy, [key], "GET", paths[0], now)
    unknown_us = (time.perf_counter_ns() - begin) / len(unknown) / 1000
    per_call.sort()
    print(f"decisions: {args.batches} batches x {args.batch_size} ({allowed} allowed per batch)")
    median = statistics.median(per_call)
    p10, p99 = per_call[len(per_call) // 10], per_call[int(len(per_call) * 0.99)]
    print(
        f"steady keys (digest cached): median {median:.2f} us, p10 {p10:.2f} us, "
        f"p99 {p99:.2f} us per decision"
    )
    print(f"first request of a key (digest not cached): median {statistics.median(cold):.2f} us")
    print(f"unknown key (well-formed, not in table): {unknown_us:.2f} us per decision")


if __name__ == "__main__":
    main()
