"""Admission: an instance gets traffic only after its own integration tests pass. `tester` runs
a service's test image against one instance, boxed in and time-limited; `gate` tests each new
instance once, stores the verdict, and keeps every gate record equal to its verdict."""
