"""The gateway: configuration, HTTP API, WebSocket sessions, auth, broker, CLI."""
