"""Pointing Game on a dataset (bundled scenes, an uploaded archive or a server folder)."""
from dashboard import evalpage

evalpage.render("pointing")
