"""Departments, purposes and fields: who owns what, and what it may be used for."""
