"""OpenAPI schemas that say `additionalProperties: false` where msgspec refuses unknown fields.

Litestar's own struct schemas leave that out (its plugin does not read msgspec's
`forbid_unknown_fields`), so a client built from the document would send fields the service
answers with 400. This subclasses Litestar's plugin, from a private module, since the schema it
builds is right in every other respect.
"""

from typing import Any

from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.spec import Schema
from litestar.typing import FieldDefinition


class ClosedStructSchema(StructSchemaPlugin):
    def is_plugin_supported_field(self, field_definition: FieldDefinition) -> bool:
        config = getattr(field_definition.type_, "__struct_config__", None)
        return bool(
            super().is_plugin_supported_field(field_definition)
            and config is not None
            and config.forbid_unknown_fields
        )

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        schema.additional_properties = False
        return schema
