"""`python -m launch` is kept for one release: use `visiontrain launch` (or `python -m visiontrain launch`)."""
