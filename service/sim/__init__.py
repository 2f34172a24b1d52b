"""A synthetic government: population and department traffic, for the demo and benchmarks."""
