"""Local infrastructure launcher: a real Kafka broker and a real PostgreSQL for development and tests.

Order of preference for each service: an address from the environment, then Docker Compose
when a Docker engine answers, then a process started here (Kafka from the official jars on
the machine's Java, PostgreSQL from the embedded ``pgserver`` package).
"""
