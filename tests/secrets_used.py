"""Every credential the tests send. None of them may appear in any gateway log, metric or error."""

API_KEY = "sk-test-Zq8mN3vR7tY2wX5pL9kJ4hG6"
INVALID_API_KEY = "sk-invalid-Qw3eR5tY7uI9oP1aS3dF"
SESSION_KEY = "sess-Tz4xC6vB8nM1qW3eR5tY7uI9"
PROXY_PASSWORD = "pr0xy-p@ss:w/rd%41"
ACCESS_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyLXNpbSIsImV4cCI6NDEwMjQ0NDgwMH0.c2lnLXNpbS1Nd3JQ"
EXPIRED_TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJleHBpcmVkIjp0cnVlfQ.expired-sig-Lk8w"
CLIENT_KEY = "gw-key-5f0c1a9e7b3d4c2a8e6f1b0d9c7a5e3f"
# A credential of no recognisable shape (no sk-, no Bearer, not a JWT): only masking by position helps.
OPAQUE_TOKEN = "opaqueT0kenWithoutAnyShape7Qx2"

# Login passwords carry what form encoding must get right: '&', '%', '=', '+' and a space.
LOGIN_PASSWORD = "S3cr&t%41=pa+ss w0rd"
WRONG_PASSWORD = "Wr0ng&%25=gu+ess"
OTHER_PASSWORD = "0ther%2B&guess=="
TOKENS_SECRET = "t0kens-s3cret-Hk2pQ9vX"
REDIS_PASSWORD = "r3dis-p@ss:Wq7z"


ALL = (
    API_KEY,
    INVALID_API_KEY,
    SESSION_KEY,
    PROXY_PASSWORD,
    LOGIN_PASSWORD,
    WRONG_PASSWORD,
    OTHER_PASSWORD,
    TOKENS_SECRET,
    REDIS_PASSWORD,
    ACCESS_TOKEN,
    EXPIRED_TOKEN,
    CLIENT_KEY,
    OPAQUE_TOKEN,
)
