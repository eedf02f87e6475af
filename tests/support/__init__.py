"""Local stand-ins for outside services, used by the tests (and runnable as processes)."""
