"""Applications of the baselines that run in their own worker processes (Celery, procrastinate)."""
