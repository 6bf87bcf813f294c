"""Every credential the tests send. None of them may appear in any gateway log, metric or error."""

API_KEY = "sk-test-Zq8mN3vR7tY2wX5pL9kJ4hG6"
INVALID_API_KEY = "sk-invalid-Qw3eR5tY7uI9oP1aS3dF"
SESSION_KEY = "sess-Tz4xC6vB8nM1qW3eR5tY7uI9"
PROXY_PASSWORD = "pr0xy-p@ss:w/rd%41"
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
)
