"""tornadoproxy: one stable HTTP API in front of the ChatGPT web backend and the OpenAI Platform API."""

__version__ = "0.1.0"
