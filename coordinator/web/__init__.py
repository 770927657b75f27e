"""The web console and the JSON REST API, served by the coordinator process (issue 15).

Both call the technicians' API methods in-process (`careline.coordinator.api.invoke`) as the
signed-in technician, so roles, validation and audit stay where the CLI already uses them.

    sessions   server-side sessions: cookie id, CSRF token, language, time zone (pure)
    app        the Litestar application: pages, form actions, /api/v1, OpenAPI
    jinja      the templates' environment (also the care report's)
    serve      runs it under uvicorn in the coordinator's event loop, with its TLS certificate
"""
