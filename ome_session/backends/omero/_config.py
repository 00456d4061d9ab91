"""What an OMERO backend is made from, checked before any client exists."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 4064  # OMERO's Glacier2 router; also what the omero CLI records when none is given


@dataclass(frozen=True)
class Config:
    """Two equal configs talk to the same server the same way (a worker's backend is re-used)."""

    host: str
    port: int = DEFAULT_PORT
    secure: bool = True
    keepalive: float | None = None
    group: str | int | None = None
    client_args: tuple[str, ...] = ()
    reuse_client: bool = True
    sudo_ttl: float = 600.0
    call_timeout: float = 30.0

    def __post_init__(self) -> None:
        host = self.host
        if not isinstance(host, str) or not host or any(c.isspace() or not c.isprintable() for c in host):
            raise ValueError(f"host must be a server name or a tcp:// / ssl:// URL, not {self.host!r}")
        if type(self.port) is not int or not 0 < self.port < 65536:
            raise ValueError(f"port must be an integer from 1 to 65535, not {self.port!r}")
        for name in ("keepalive", "sudo_ttl", "call_timeout"):
            value = getattr(self, name)
            if (value is not None or name != "keepalive") and (
                    isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0):
                raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")
        if isinstance(self.group, bool) or (self.group is not None and not isinstance(self.group, (str, int))):
            raise ValueError(f"group must be a group name or id, not {self.group!r}")
        if isinstance(self.client_args, str) or not all(isinstance(a, str) for a in self.client_args):
            raise ValueError("client_args must be a sequence of strings such as '--Ice.Default.Router=...'")
        object.__setattr__(self, "client_args", tuple(self.client_args))

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def call_timeout_ms(self) -> int:
        return int(self.call_timeout * 1000)
