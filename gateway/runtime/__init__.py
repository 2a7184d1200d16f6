"""The per-process context both listeners share: the runtime object, typed app keys, logs and
metrics.

May import: keys, policy, ratelimit, store, settings, clock. Never imports a listener (proxy,
admin) or the wiring (serve).
"""
