"""`make bench`: aljex-sync's speed goals, measured against baselines run in the same process."""
