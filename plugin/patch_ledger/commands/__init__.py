"""One module a command: each `run(...)` takes plain values, reports, and returns an exit code."""
