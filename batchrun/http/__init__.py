"""HTTP to an OpenAI-compatible API: where requests go, and the session.
"""
