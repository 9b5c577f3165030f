"""picluster: a drawer of Raspberry Pis as one ipyparallel cluster."""

__version__ = "0.1.0"
