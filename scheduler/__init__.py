"""cganctl control plane: settings, job specs, job table, object store, queueing and the CLI.

Nothing in this package imports torch at module level: the CLI's start-up path stays light.
"""
