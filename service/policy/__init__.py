"""Owner-written agreements, compiled for every access, with explain and simulate."""
