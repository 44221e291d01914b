"""Builders shared by the tests, the benchmarks and the demo: Kubernetes objects as plain dicts.

Here, in the installed package, and not under tests/ or bench/: both import it and it imports
neither, so the dependencies stay one-way (tests -> topodra_cli.testing <- bench).
"""
