"""The benchmark of issue 4: `scripts/bench` (see README, Performance)."""
