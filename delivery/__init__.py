"""delivery: the CD side of the stack. `build-and-push` turns a service's source into tested,
versioned images in a registry; `deploy` runs a version on a (remote) engine and lets the gate
decide whether it serves."""
