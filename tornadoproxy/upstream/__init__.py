"""Reaching the upstreams: the engine-neutral transport seam (transport) and its two libcurl engines
(curl_client on pycurl, impersonation on curl_cffi; engines picks one per client profile), the client
profiles, egress proxies and their health, the bounded gate, the fetcher that starts exchanges and
fails over, and the reading of what an upstream answered (diagnosis). The only place that imports
pycurl or curl_cffi, and the one boundary where libcurl failures become `UpstreamError`s.
"""
