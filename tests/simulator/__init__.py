"""A loopback simulator of the upstreams in shared/spec (Platform API, ChatGPT backend, logins)."""
