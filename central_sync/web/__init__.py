"""Command-centre web app: live incident queue, roles, lifecycle, posts, CAP 1.2 (see app.py)."""
