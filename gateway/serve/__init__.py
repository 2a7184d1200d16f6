"""A running gateway: wiring the listeners, store, table and feed together, and the process model
(single process, or a supervisor and workers).

May import every package except cli and demo.
"""
