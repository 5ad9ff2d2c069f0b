"""Which payload fields identify a person (UU PDP): hidden from non-staff on the desk
(``web.policy.redact``) and erased by retention after ``personal_data_retention_days``."""

from __future__ import annotations

#: Payload keys that identify a person (matched as substrings, case-insensitive).
PERSONAL_KEYS = ("reporter", "operator", "phone", "msisdn", "name", "nik", "caller", "contact",
                 "identity", "email")


def is_personal_key(key: str) -> bool:
    k = key.lower()
    return any(p in k for p in PERSONAL_KEYS)
