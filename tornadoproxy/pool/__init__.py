"""The account pool: ChatGPT web accounts the gateway holds (logs in and keeps logged in), shares (one
answer per account at a time, a FIFO wait queue, across gateways through Redis), paces (cool-downs)
and shows (/accounts, metrics). `AccountPool.acquire()` is the consumer's entry point (pool.py);
`borrow()` lends an account without a slot for requests that are not answers (borrow.py), and
`affinity` remembers which account a conversation belongs to (affinity.py). The contract is
docs/imitate.md ("The account pool", "Configuration contract").
"""
