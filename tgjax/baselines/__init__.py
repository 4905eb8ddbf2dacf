"""Grouping methods that tgjax compares with the one-shot search."""
