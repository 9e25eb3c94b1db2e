"""SonoVLM's benchmarks (``make bench``), run from the repository root as ``python -m benchmarks.NAME``.

Not part of the installed library: they print speed figures for the README, they are not tests.
Servers are started with :mod:`sonovlm.server_launcher`.
"""
