"""patch-ledger: a git-native ledger of patches, gates and run state."""

__version__ = "0.1.0"
