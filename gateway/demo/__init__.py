"""`keygate demo` and the small 1Integrate-like backend it fronts.

May import every package except cli; nothing imports it but cli.
"""
