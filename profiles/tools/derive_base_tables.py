"""Derives the two small tables in profiles/base/ from the FHIR R4 (4.0.1) definitions.

Inputs (from the official R4 definitions package): fhir.schema.json, profiles-resources.json,
profiles-types.json. Outputs:
  required-primitives.json  schema definition name -> primitive elements with min >= 1
  summary-elements.json     resource type -> {summary: [...], mandatory: [...]} top-level names

Usage: python3 derive_base_tables.py DEFINITIONS_DIR OUTPUT_DIR
"""
import json
import sys
from pathlib import Path

source, target = Path(sys.argv[1]), Path(sys.argv[2])
schema = json.loads((source / "fhir.schema.json").read_text())["definitions"]
resources = json.loads((source / "profiles-resources.json").read_text())
types = json.loads((source / "profiles-types.json").read_text())
primitives = {e["resource"]["id"] for e in types["entry"] if e["resource"].get("kind") == "primitive-type"}


def base_definitions(bundle, kinds):
    for entry in bundle["entry"]:
        definition = entry["resource"]
        if definition.get("resourceType") != "StructureDefinition" or definition.get("derivation") == "constraint":
            continue
        if definition["kind"] in kinds:
            yield definition


def schema_definition(path):
    """Follows properties/$ref through the schema from a type to a nested backbone element."""
    parts = path.split(".")
    name = parts[0]
    for segment in parts[1:]:
        if name not in schema:
            return None
        prop = schema[name]["properties"].get(segment)
        ref = prop and (prop.get("$ref") or prop.get("items", {}).get("$ref"))
        if not ref:
            return None
        name = ref.split("/")[-1]
    return name


required = {}
for definition in list(base_definitions(resources, {"resource", "complex-type"})) + list(base_definitions(types, {"complex-type"})):
    for element in definition["snapshot"]["element"]:
        path = element["path"]
        if "." not in path or element.get("min", 0) < 1 or path.endswith("[x]"):
            continue
        codes = [t["code"] for t in element.get("type", [])]
        if len(codes) != 1 or codes[0] not in primitives:
            continue
        parent, name = path.rsplit(".", 1)
        owner = schema_definition(parent)
        if owner is None or owner not in schema:
            continue
        if name not in required.setdefault(owner, []):
            required[owner].append(name)

summary = {}
for definition in base_definitions(resources, {"resource"}):
    if definition.get("abstract") or definition["id"] not in schema:
        continue
    properties = schema[definition["id"]]["properties"]
    entry = {"summary": [], "mandatory": []}
    for element in definition["snapshot"]["element"]:
        parts = element["path"].split(".")
        if len(parts) != 2:
            continue
        name = parts[1]
        if name.endswith("[x]"):
            stem = name[:-3]
            names = [p for p in properties if p.startswith(stem) and p[len(stem):len(stem) + 1].isupper()]
        else:
            names = [name]
        if element.get("isSummary"):
            entry["summary"] += names
        if element.get("min", 0) >= 1:
            entry["mandatory"] += names
    summary[definition["id"]] = entry

(target / "required-primitives.json").write_text(json.dumps(required, indent=1, sort_keys=True))
(target / "summary-elements.json").write_text(json.dumps(summary, indent=0, sort_keys=True))
