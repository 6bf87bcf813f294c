"""In-process tests of the upstream side: gate, fetcher, exchange and relay on one event loop, against
a real loopback upstream (a tornado server in the same loop, reached through libcurl) or a test
transport behind the engine seam. Faster and more precise than the subprocess suite for these parts."""
