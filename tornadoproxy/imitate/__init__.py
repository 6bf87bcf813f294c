"""ChatGPT web accounts answering as the OpenAI API: the pure logic of `/imitate/v1/...` (docs/imitate.md).

OpenAI request -> web conversation body (request, conversation, models), the sentinel and its proof
of work (sentinel, proofofwork, browser), reading the web answer stream in both framings (reader,
delta), writing the OpenAI answer (output) and counting its tokens (tokens). Nothing here does I/O
beyond the proof of work's process pool: the handler fetches, these modules decide and convert.
"""
