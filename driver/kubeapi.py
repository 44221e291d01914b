"""Moved to `kubeaccess` (shared with the extender and the harness); this name goes away once the last
importers in the driver are switched over."""

from kubeaccess.errors import ApiError
from kubeaccess.errors import CredentialsError as ConfigError
from kubeaccess.stream import CONNECTED
from kubeaccess.sync import KubeClient, path_escape

__all__ = ["CONNECTED", "ApiError", "ConfigError", "KubeClient", "path_escape"]
