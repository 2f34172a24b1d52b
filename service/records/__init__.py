"""Citizens and their field values: the one access path to citizen data."""
