"""The route policy: model, loader (problems with lines), compiled matcher, the canonical path
skeleton, and reloads.

May import: settings, problems, clock. Imports no aiohttp and no store.
"""
