"""Session KV caches at rest: serialisation, turn records, and the Redis / in-process stores."""
