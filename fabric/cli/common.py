"""What the CLI's commands share: the --address and --params options, FABRIC_HOME, and connecting."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from fabric.errors import ErrorCode, FabricError
from fabric.settings import settings
from fabric.spec import parse_runtime_params, read_spec

DagArg = Annotated[Path, typer.Argument(help="DAG spec, YAML or JSON", exists=False)]
ParamsOpt = Annotated[str | None, typer.Option("--params", "-p",
                                               help="runtime params: a YAML/JSON file or inline JSON")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray address, or the gateway's http(s):// URL with FABRIC_TOKEN set "
                      "(default: FABRIC_ADDRESS, else RAY_ADDRESS, else the local Ray)")]


DISTRIBUTIONS = ("fabric-ray", "fabric")  # the name on the package index, then the older local name


def fabric_version() -> str:
    """The installed distribution's version, else the package's own `__version__`."""
    from importlib.metadata import PackageNotFoundError, version

    for name in DISTRIBUTIONS:
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    import fabric

    return str(getattr(fabric, "__version__", "unknown"))


def home() -> str:
    """FABRIC_HOME, else ~/.fabric: where the local store, tokens and artifacts live."""
    return settings().home


def params(value: str | None, exclude_defaults: bool = False) -> dict[str, Any]:
    """Runtime params from a YAML/JSON file or inline JSON, read as safely as a spec."""
    if not value:
        return {}
    path = Path(value)
    return parse_runtime_params(read_spec(path if path.exists() else value)).model_dump(
        mode="json", exclude_none=True, exclude_defaults=exclude_defaults)


CLI_HTTP_RETRY_S = 10.0


def connect(address: str | None, working_dir: str | None = None) -> Any:
    """A Client: through the gateway for an http(s):// address, else by joining Ray (default: FABRIC_ADDRESS,
    else auto)."""
    from fabric.connection import connect as connect_to

    address = address or settings().address

    if working_dir and address and address.startswith(("http://", "https://")):
        raise FabricError("--working-dir uploads through Ray; the gateway takes no files",
                          code=ErrorCode.SPEC_FIELD, where="--working-dir",
                          fix="upload a zip to s3:// or gs:// and pass it as runtime_params.runtime_env.working_dir")
    runtime_env = {"working_dir": working_dir} if working_dir else None
    if address and address.startswith(("http://", "https://")):
        # The HTTP client (no Ray imported on this side). A person at a prompt waits out a gateway restart for
        # seconds, not the SDK's minute: then the command exits UNREACHABLE with the fix.
        return connect_to(address, retry_for=CLI_HTTP_RETRY_S)
    return connect_to(address or "auto", runtime_env=runtime_env)
