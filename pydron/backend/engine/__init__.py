"""The worker engine: the master's side of the wire protocol.

It owns the connections (:mod:`.connection`), the queue of calls, batching, prefetch,
retries, heartbeats, cancellation, call timeouts and shared objects, and the named states
of calls and workers (:mod:`.states`); it serves workers the user's modules
(:mod:`.module_server`). How a worker process is started and how its end is seen is a
launcher's business (:mod:`pydron.backend.launchers`).
"""
