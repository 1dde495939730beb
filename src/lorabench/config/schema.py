"""The config schema (workflow/schemas/config.schema.yaml), read once: the single home of every setting's
default. Config validation fills defaults from it, and so does ``build_method`` for callers that build a
method from a partial mapping (tests, benchmarks), so code never repeats a default."""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "workflow" / "schemas" / "config.schema.yaml"


@functools.lru_cache(maxsize=1)
def _parsed_schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def load_schema() -> dict:
    """A fresh copy of the schema (callers may modify it); the file is read and parsed once per process."""
    return copy.deepcopy(_parsed_schema())


def _resolve(schema: dict, ref: str) -> dict:
    node = schema
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def method_settings(schema: dict, node: dict) -> dict[str, dict]:
    """Every setting a method type accepts, by name, with the definitions it refers to ($ref, allOf) first so
    that the type's own properties (a preset's defaults) win."""
    out: dict[str, dict] = {}
    parts = [node["$ref"]] if "$ref" in node else []
    parts += [p["$ref"] for p in node.get("allOf", []) if "$ref" in p]
    for ref in parts:
        for key, sub in method_settings(schema, _resolve(schema, ref)).items():
            out[key] = {**out.get(key, {}), **sub}
    for key, sub in node.get("properties", {}).items():
        out[key] = {**out.get(key, {}), **sub}
    return out


@functools.lru_cache(maxsize=None)
def _defaults(kind: str) -> tuple:
    schema = _parsed_schema()  # read only
    types = schema["$defs"]["method_types"]
    if kind not in types:
        return ()
    return tuple((k, v["default"]) for k, v in method_settings(schema, types[kind]).items() if "default" in v)


def method_defaults(kind: str) -> dict:
    """The default of every setting of method type ``kind`` that has one ({} for an unknown type)."""
    return copy.deepcopy(dict(_defaults(kind)))
