"""The running process: the composition root (server: builds every component once), from a
configuration to the routes and stores it implies (wiring), reload and drain (runtime), and the
supervisor of worker processes (workers). Nothing imports this package but __main__.
"""
