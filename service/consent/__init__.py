"""Citizens' choices over agreements that are not statutory: consents and objections."""
