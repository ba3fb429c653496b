"""The shared test harness: real services and real processes for ``tests/`` and ``bench/``.

- :mod:`harness.services`: the ``cganctl`` command as a subprocess, fresh PostgreSQL databases, Redis
  databases, SeaweedFS + PostgreSQL + Redis together (``real_services``), ``cganctl worker`` processes.
- :mod:`harness.s3server`: a throwaway SeaweedFS S3 server on free loopback ports.
- :mod:`harness.worker_process`: one ``cganctl worker`` process, started and stopped by PID.

Importable from the repository root (pytest's ``pythonpath``; bench scripts run as ``python -m bench.NAME``).
"""
