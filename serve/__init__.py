"""The HTTP face of fabric: a Ray Serve deployment with a FastAPI ingress over fabric's public API."""
