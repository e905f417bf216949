"""The sans-I/O kernel core: the object table, processes and syscall semantics (no sockets)."""
