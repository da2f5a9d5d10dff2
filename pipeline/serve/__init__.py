"""make serve: an OpenAI-compatible completions server over a run's checkpoint.

    stage.py    the config, loading the run, the socket, uvicorn
    app.py      the Starlette app: routes, the API key, the body limit, errors
    schema.py   the completions body, checked; OpenAI's error shape
    run.py      one request in flight: engine events -> a response or server-sent events

Batching and generation are the library's (model/engine.py, model/completion.py),
which knows nothing of HTTP.
"""
