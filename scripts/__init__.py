"""The repository's scripts (not part of the clrp package); ``scripts.tables`` is shared by them."""
