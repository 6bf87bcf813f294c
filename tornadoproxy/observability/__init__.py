"""What the gateway tells its operators: Prometheus metrics (metrics, and sharedmetrics for several
worker processes) and the logs (logs: JSON or text lines, the access log, uncaught exceptions).
"""
