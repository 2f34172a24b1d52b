"""Investigations' case references: delayed disclosure of the accesses made under them."""
