"""The serve tests use the session fixtures of tests/conftest.py: ``tiny`` (a tiny trained job-market model,
exported and published as ``registry/tiny`` v0001), ``break_version`` and ``ray_local``."""
