"""Board modules: one per supported board, chosen by imnode.hal. Only these import machine/network."""
