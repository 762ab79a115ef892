"""The built-in gates, each an ordinary plugin of the hooks in patch_ledger.hookspecs."""
