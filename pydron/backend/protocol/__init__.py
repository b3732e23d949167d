"""The wire protocol between a pool (the master) and its workers, shared by both ends.

:mod:`.frames` (the frame format, kinds, limits, exit codes), :mod:`.handshake` (the first
frames: authentication and the version check), :mod:`.records` (what TASKS and RESULTS
frames carry), :mod:`.replies` (the answers to a worker's module and shared-object
requests), :mod:`.modules` (the modules never served), :mod:`.liveness` (telling a busy
peer from a lost one) and :mod:`.shipping` (how functions, arguments, results and
exceptions are pickled). Nothing here knows about Twisted, processes or hosts.

This package's namespace is the wire format in one place (frames, handshake, replies,
liveness), for tools and tests that speak it by hand; the code of either end imports the
module it needs.
"""
from pydron.backend.protocol.frames import *  # noqa: F401,F403
from pydron.backend.protocol.frames import __all__ as _frames
from pydron.backend.protocol.handshake import *  # noqa: F401,F403
from pydron.backend.protocol.handshake import __all__ as _handshake
from pydron.backend.protocol.liveness import *  # noqa: F401,F403
from pydron.backend.protocol.liveness import __all__ as _liveness
from pydron.backend.protocol.replies import *  # noqa: F401,F403
from pydron.backend.protocol.replies import __all__ as _replies

__all__ = [*_frames, *_handshake, *_replies, *_liveness]
