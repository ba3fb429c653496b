"""``cganctl ui``: a read-only web dashboard over the same sources as the CLI.

Server-rendered (Starlette + Jinja2 with autoescape on, a few lines of JavaScript for the step slider,
no front-end build). Installed with the optional extra ``cganctl[ui]``; nothing here is imported by the
CLI until ``cganctl ui`` runs, so the CLI's start-up stays light.
"""
