"""Command-centre accounts: operator, rt_admin (one or more RTs) and admin; argon2 passwords."""

from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass
from enum import StrEnum

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from central_sync.errors import AuthError
from central_sync.store.desk_tables import DeskTables


class Role(StrEnum):
    OPERATOR = "operator"   # police command centre
    RT_ADMIN = "rt_admin"   # Ketua RT / RT secretary for one or more RTs
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class RtRef:
    """One RT: kelurahan code, RW number, RT number."""

    kelurahan_code: str
    rw: int
    rt: int

    @classmethod
    def parse(cls, text: str) -> RtRef:
        """Parse ``KELURAHAN/RW/RT`` such as ``33.74.01.1001/5/3``."""
        parts = text.strip().split("/")
        if len(parts) != 3 or not re.fullmatch(r"\d{2}(\.\d{2}){2}\.\d{4}", parts[0]):
            raise AuthError(f"RT must be KELURAHAN_CODE/RW/RT (e.g. 33.74.01.1001/5/3): {text!r}")
        try:
            rw, rt = int(parts[1]), int(parts[2])
        except ValueError:
            raise AuthError(f"RW and RT must be numbers: {text!r}") from None
        if rw < 1 or rt < 1:
            raise AuthError(f"RW and RT start at 1: {text!r}")
        return cls(parts[0], rw, rt)

    def __str__(self) -> str:
        return f"{self.kelurahan_code}/{self.rw}/{self.rt}"


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    rts: frozenset[RtRef] = frozenset()

    @property
    def is_staff(self) -> bool:
        """Operators and admins: police-side staff who may see crime reports."""
        return self.role in (Role.OPERATOR, Role.ADMIN)

    def covers(self, kelurahan_code: str | None, rw: int | None, rt: int | None) -> bool:
        """Is this RT one of the user's RTs (always False for an unknown location)?"""
        if kelurahan_code is None or rw is None or rt is None:
            return False
        return RtRef(kelurahan_code, int(rw), int(rt)) in self.rts


NAME_RE = re.compile(r"^[A-Za-z0-9_.@-]{2,64}$")
MIN_PASSWORD = 10

#: The passwords' hasher: argon2id at argon2-cffi's defaults (RFC 9106's low-memory profile,
#: about 0.1-0.4 s a hash or check on a small machine). The only one central itself uses.
DEFAULT_HASHER = PasswordHasher()


@functools.cache
def _dummy_hash(hasher: PasswordHasher) -> str:
    """Verified against when the user does not exist, so timing does not reveal names (made by
    the same hasher as real hashes, so it costs the same). Made on first use, not at import:
    every ``kentongan-central`` command imports this module."""
    return hasher.hash("kentongan-no-such-user")


class UserStore:
    """Accounts in the desk's ``web_users`` / ``web_user_rts`` tables (``store.desk()``).

    ``hasher`` is :data:`DEFAULT_HASHER` everywhere in central; the test harness
    (``web.testing.WebEnv``) passes a cheap argon2id one so that its hundreds of logins do not
    each cost a production hash. A stored hash carries its own parameters, so either checks
    the other's hashes."""

    def __init__(self, tables: DeskTables, hasher: PasswordHasher = DEFAULT_HASHER) -> None:
        self.tables = tables
        self.hasher = hasher

    @staticmethod
    def _role_and_rts(role: Role | str, rts: list[RtRef] | tuple[RtRef, ...]) -> Role:
        try:
            role = Role(role)
        except ValueError:
            raise AuthError(f"unknown role {role!r} (operator, rt_admin, admin)") from None
        if role is Role.RT_ADMIN and not rts:
            raise AuthError("an rt_admin needs at least one --rt KELURAHAN/RW/RT")
        if role is not Role.RT_ADMIN and rts:
            raise AuthError("only an rt_admin has RTs")
        return role

    def add(self, name: str, role: Role | str, password: str,
            rts: list[RtRef] | tuple[RtRef, ...] = ()) -> User:
        if not NAME_RE.match(name):
            raise AuthError("user name must be 2-64 letters, digits or _.@-")
        role = self._role_and_rts(role, rts)
        if len(password) < MIN_PASSWORD:
            raise AuthError(f"password must have at least {MIN_PASSWORD} characters")
        digest = self.hasher.hash(password)
        if not self.tables.add_user(name, role.value, digest, time.time(),
                                    [(r.kelurahan_code, r.rw, r.rt) for r in rts]):
            raise AuthError(f"user {name!r} exists")
        return User(name, role, frozenset(rts))

    def remove(self, name: str) -> None:
        """Delete the account, its RTs and its sessions (logged out at once)."""
        if not self.tables.remove_user(name):
            raise AuthError(f"no user {name!r}")

    def set_role(self, name: str, role: Role | str,
                 rts: list[RtRef] | tuple[RtRef, ...] = ()) -> User:
        """Change role (and RTs); effective on the user's next request."""
        role = self._role_and_rts(role, rts)
        if not self.tables.set_user_role(name, role.value, [(r.kelurahan_code, r.rw, r.rt) for r in rts]):
            raise AuthError(f"no user {name!r}")
        return User(name, role, frozenset(rts))

    def get(self, name: str) -> User | None:
        row = self.tables.user(name)
        if row is None:
            return None
        rts = frozenset(RtRef(k, rw, rt) for k, rw, rt in self.tables.user_rts(name))
        return User(row["name"], Role(row["role"]), rts)

    def verify(self, name: str, password: str) -> User:
        """The user when the password matches; ``AuthError`` otherwise (same message either way)."""
        row = self.tables.user(name)
        try:
            self.hasher.verify(row["password_hash"] if row else _dummy_hash(self.hasher), password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            raise AuthError("wrong user name or password") from None
        if row is None:
            raise AuthError("wrong user name or password")
        user = self.get(name)
        if user is None:
            raise AuthError("wrong user name or password")
        return user

    def all_users(self) -> list[User]:
        return [u for u in (self.get(n) for n in self.tables.user_names()) if u is not None]
