"""The recommendation service: Ray Serve app (app.py) over a Ray-free scorer (scorer.py)."""
