"""The benchmark report: run every bench/ script with `--json`, then render docs/benchmarks.md and its plots.

runner.py runs the scripts and records the machine; plots.py draws the PNGs; sections.py turns each script's
JSON into Markdown; markdown.py puts the document together. bench/report.py is the command line.
"""
