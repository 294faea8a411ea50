"""The HTTP layer: routes, SSE responses, the standalone app."""
