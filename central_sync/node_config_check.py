"""Checks of the node configuration central writes into an enrolment bundle, against the post's
PUBLISHED schema (``firmware_config/schema/node-config.schema.json``, JSON Schema 2020-12,
generated from ``edge.config`` and kept current by a test) instead of importing the post's
config code: central depends only on the post's protocol surface (docs/central-store.md).

The node-id rule is the wire protocol's (``edge.sync.wire.NodeId``).
"""

from __future__ import annotations

import json
import logging
import os
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import TypeAdapter, ValidationError

from central_sync.errors import PkiError
from edge.logs import log_event
from edge.sync.wire import NodeId

log = logging.getLogger("central_sync.node_config_check")

#: Where the schema is looked for: $KENTONGAN_NODE_SCHEMA, then the source tree.
SCHEMA_ENV = "KENTONGAN_NODE_SCHEMA"
SCHEMA_PATH = Path(__file__).resolve().parent.parent / "firmware_config" / "schema" / "node-config.schema.json"

_node_id = TypeAdapter(NodeId)


def valid_node_id(node_id: str) -> bool:
    """The wire protocol's node-id rule (``central`` is reserved for central itself)."""
    try:
        _node_id.validate_python(node_id)
    except ValidationError:
        return False
    return node_id != "central"


@cache
def _validator() -> Draft202012Validator | None:
    path = Path(os.environ.get(SCHEMA_ENV) or SCHEMA_PATH)
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log_event(log, "node_schema_missing", logging.WARNING, path=str(path), error=str(exc)[:200])
        return None
    return Draft202012Validator(schema)


def check_node_config(config: dict[str, Any]) -> None:
    """Raise ``PkiError`` naming the first problem when ``config`` breaks the node schema."""
    validator = _validator()
    if validator is None:  # an installation without the schema file: the post checks on install
        return
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        err = errors[0]
        where = ".".join(str(p) for p in err.absolute_path) or "<root>"
        raise PkiError(f"node config would be invalid: {where}: {err.message[:300]}")
