"""The worker program, run as ``python -m pydron.backend.worker --port P --index I ...``.

Launchers start it on this machine or on remote hosts (the process command line names
this package, and tests look for it). :mod:`.program` is the program itself,
:mod:`.module_finder` the import hook that asks the master for the user's modules. It
imports only :mod:`pydron.backend.protocol` (and the shared-object cache of
:mod:`pydron.backend.sharing`), never the engine or Twisted, so that it starts fast.
"""
