"""Fixtures of the end-to-end tests beyond the shared ones: the real egress proxies."""

from tests.egress_fixtures import proxies as proxies
