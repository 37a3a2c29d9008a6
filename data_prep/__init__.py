"""`python -m data_prep` is kept for one release: use `visiontrain prep` (or `python -m visiontrain prep`)."""
