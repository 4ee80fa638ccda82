"""What the stack knows, for people and programs: `status` and `why` (with `explain`: why an
instance is served or not, in one sentence) and `wait`, the CD job's yes or no with an exit code."""
