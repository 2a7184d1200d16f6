"""The proxy listener's request flow: target hygiene, credentials, the decision, header hygiene,
error answers, request notes and the access log.

May import: keys, policy, ratelimit, upstream, runtime (the per-process context), settings,
clock, verify. Its pure modules (target, hygiene, credentials, refusals, auth, decision, notes)
import no aiohttp and no store.
"""
