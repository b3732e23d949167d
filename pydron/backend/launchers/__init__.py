"""Launchers: how worker processes start and end -- on this machine, over SSH, on cloud
instances -- and nothing about calls (:mod:`.base` is the interface the engine uses).

:mod:`.local` starts child processes, :mod:`.ssh` starts workers on ssh hosts (through
:mod:`.ssh_transport`, the SSH plumbing: connect, check, ship pydron, forward ports,
start supervised processes), :mod:`.cloud` provisions instances (through
:mod:`.cloud_provider`, the libcloud side) and hands them to an ssh launcher;
:mod:`.remote` holds the programs sent to remote hosts as source.
"""
