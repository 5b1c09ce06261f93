"""Speed measurements, one module per subject, each an absl app run with `python -m`.

They print a table and optionally write JSON (`--out`); they assert nothing about time. Tests
never time anything: the numbers live in docs/ pages, with the device they came from.
"""
