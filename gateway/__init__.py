"""The REST gateway: FastAPI in front of the users and ai gRPC services.

It validates each request, makes one gRPC call through the generated stubs and turns
the answer, or the gRPC status, back into REST. It holds no business rules and no
database. `python -m gateway` serves it; `create_app(settings)` builds the app.
"""

from gateway.app import create_app
from gateway.settings import GatewaySettings

__all__ = ["GatewaySettings", "create_app"]
