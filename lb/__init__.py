"""lb: a multiprocess L4/L7 load balancer with a compiled Cython data path."""

__version__ = "0.1.0"
