"""The admin listener: key management API, admin authentication, health probes.

The app factory lives in gateway.admin.app; this package init imports nothing, so the CLI
can use gateway.admin.accounts without loading aiohttp.
"""
