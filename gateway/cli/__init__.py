"""The `keygate` command line, one module per command group.

May import every package; nothing imports it.
"""
