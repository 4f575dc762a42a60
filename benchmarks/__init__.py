"""Speed measurements that print tables of ratios (run by hand, not in CI)."""
