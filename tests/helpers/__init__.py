"""What the tests share: servers, harnesses, runners and data. Imported by test modules; never
importing one (tests/test_boundaries.py)."""
