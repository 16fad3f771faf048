"""The requestor side: the engine, work contexts, scripts, market strategies and payloads."""
