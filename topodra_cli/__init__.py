"""The `topodra` command line and the local real-cluster harness."""

__version__ = "0.1.0"
