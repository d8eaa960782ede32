"""Selects tests/data/r4-examples.ndjson from the FHIR R4 examples package.

Input: the npm package hl7.fhir.r4.examples 4.0.1 (HL7, CC0-1.0; "Example resources in the R4
version of the FHIR standard"), fetched from the npm registry:

    npm pack hl7.fhir.r4.examples@4.0.1      # integrity sha512-DXBdIZOeQaSKIgCU7w6HOC7sw/6BzylmipLkBW4f//pT+Bc94x+8LImwTdvaNThPJoOzpBzvxAzNqjeu3X/zLw==
    python3 tests/data/select_r4_examples.py hl7.fhir.r4.examples-4.0.1.tgz conformance/compartmentdefinition-patient.json tests/data/r4-examples.ndjson

Selection: every example whose type is in the Patient compartment (a person's record) or is a
directory type a care team refers to (Patient, Practitioner, PractitionerRole, Organization,
Location, HealthcareService, RelatedPerson, Endpoint, Device, Medication, Substance), except
Bundles and files over 40,000 bytes. Output: one example per line, in file-name order, each
resource exactly as published (re-serialised compactly, keys in their published order), with
no other change.
"""
import json
import sys
import tarfile

package, compartment_file, output = sys.argv[1], sys.argv[2], sys.argv[3]
compartment = json.load(open(compartment_file, encoding="utf-8"))
person = {r["code"] for r in compartment["resource"] if r.get("param")}
directory = {"Patient", "Practitioner", "PractitionerRole", "Organization", "Location", "HealthcareService",
             "RelatedPerson", "Endpoint", "Device", "Medication", "Substance"}
lines = []
with tarfile.open(package) as archive:
    manifest = json.load(archive.extractfile("package/package.json"))
    assert (manifest["name"], manifest["version"]) == ("hl7.fhir.r4.examples", "4.0.1"), manifest
    for member in sorted(archive.getmembers(), key=lambda m: m.name):
        name = member.name.rsplit("/", 1)[-1]
        if not name.endswith(".json") or name == "package.json" or name.startswith("."):
            continue
        resource_type = name.split("-", 1)[0]
        if resource_type == "Bundle" or resource_type not in person | directory or member.size > 40000:
            continue
        resource = json.load(archive.extractfile(member))
        lines.append(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))
with open(output, "w", encoding="utf-8") as target:
    target.write("\n".join(lines) + "\n")
print(f"{len(lines)} examples written to {output}")
