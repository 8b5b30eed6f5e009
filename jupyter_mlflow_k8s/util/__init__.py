"""Small rules used everywhere (identity, durations, ``K=V`` pairs, names, processes).

The bottom layer: nothing here imports another part of the package except ``errors``.
"""
