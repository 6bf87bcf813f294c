"""The HTTP side: the tornado application (app) and listener (listener, framing), the checks before a
request is read (access, cors, credentials, body_intake), what handlers receive (services), and the
handlers themselves (handlers/, one module per API family). Never imports pycurl, curl_cffi, yaml or
cachetools: what the upstream side does reaches a handler through the relay.
"""
