"""Reader-study analysis (later issue)."""
