"""Grids of runs (sweep.py, lottery.py, allocate.py): scripts run in processes forked from a preloaded server
(`processes`), one cell of a grid with its checks and its Ray remote (`cells`), and the seeds, granularity settings
and loop that the grid scripts share (`loop`).

May import every other layer of `pruning`; nothing of `pruning` imports it.
"""
