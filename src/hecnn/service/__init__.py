"""The client/server service: a FastAPI server holding only public evaluation keys, and a client
that keeps the secret key (``hecnn serve``, ``hecnn client classify``)."""

from hecnn.service.app import Limits, create_app
from hecnn.service.client import Classification, ServerInfo, ServiceClient, classify

__all__ = ["Classification", "Limits", "ServerInfo", "ServiceClient", "classify", "create_app"]
