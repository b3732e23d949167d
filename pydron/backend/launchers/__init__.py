"""Launchers: how worker processes start and end -- on this machine, over SSH, on cloud
instances -- and nothing about calls (see :mod:`.base` for the interface).

:mod:`.ssh_transport` is the SSH plumbing (paramiko: connect, check, ship pydron, forward
ports, start supervised processes), :mod:`.cloud_provider` the libcloud provisioning,
:mod:`.remote` the programs sent to remote hosts as source.
"""
