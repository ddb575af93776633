"""The HTTP API: an OpenAI-compatible chat endpoint, health and metrics, and a demo page.

    <project> serve --model outputs/<run>/adapter      # http://127.0.0.1:8000

`app.create_app` wires the parts: `settings` (LLM_* environment), `loader` (model source -> merged model;
`int8` makes decoding faster on a CPU when asked), `engine` (the micro-batching generator), `deps` (the app's
state and the routes' dependencies), `routes/` (one router per resource) and `middleware` (body size limit; each
chat request handed to `monitor.accounting` for its metrics and request-log line). `server.run` serves the app
with uvicorn, under limits on request heads and connections, and with a shutdown that answers every request in
flight.
"""
