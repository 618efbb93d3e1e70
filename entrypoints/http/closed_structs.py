"""OpenAPI schemas for request bodies that say what the service enforces.

Litestar's own struct schemas leave out `additionalProperties: false` (its plugin does not
read msgspec's `forbid_unknown_fields`), and every constraint declared with msgspec's `Meta`
(patterns, lengths) inside a union; a client built from the document would then send what the
service answers with 400. This subclasses Litestar's plugin, from a private module, since the
schema it builds is right in every other respect; and a struct marked `MsgspecDocumented` is
shown exactly as msgspec itself states what it decodes.
"""

import dataclasses
from typing import Any, ClassVar

import msgspec
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import Schema
from litestar.typing import FieldDefinition

_ALIASES = {f.metadata.get("alias", f.name): f.name for f in dataclasses.fields(Schema)}
_SUBSCHEMA = {"items", "not", "propertyNames"}
_SUBSCHEMAS = {"anyOf", "oneOf", "allOf"}


class MsgspecDocumented:
    """A mixin for a request struct: the document shows msgspec's own JSON schema of it, and
    `exclusive` names fields it refuses together (its __post_init__ says so)."""

    exclusive: ClassVar[tuple[str, ...]] = ()


class ClosedStructSchema(StructSchemaPlugin):
    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        config = getattr(field_definition.type_, "__struct_config__", None)
        return bool(
            super().is_plugin_supported_field(field_definition)
            and config is not None
            and config.forbid_unknown_fields
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        kind = field_definition.type_
        if isinstance(kind, type) and issubclass(kind, MsgspecDocumented):
            schema = _from_msgspec(kind)
            if kind.exclusive:
                schema.schema_not = Schema(required=list(kind.exclusive))
            return schema
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema


def _from_msgspec(kind: type) -> Schema:
    """msgspec's schema of `kind`, its definitions inlined (the document has none of them)."""
    found = msgspec.json.schema(kind)
    definitions = found.pop("$defs", {})

    def convert(node: dict[str, Any]) -> Schema:
        if "$ref" in node:
            return convert(definitions[node["$ref"].rsplit("/", 1)[1]])
        fields: dict[str, Any] = {}
        for key, value in node.items():
            if key == "discriminator":  # it maps to definitions the document does not have
                continue
            if key == "properties":
                value = {name: convert(sub) for name, sub in value.items()}
            elif key in _SUBSCHEMAS:
                value = [convert(sub) for sub in value]
            elif key in _SUBSCHEMA or (key == "additionalProperties" and isinstance(value, dict)):
                value = convert(value)
            fields[_ALIASES.get(key, key)] = value
        return Schema(**fields)

    return convert(found)
