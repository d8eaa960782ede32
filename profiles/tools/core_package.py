"""Reading the FHIR package hl7.fhir.r4.core 4.0.1 (a .tgz), shared by the derivation scripts."""
import json
import tarfile


def structure_definitions(package):
    """Every StructureDefinition of the package, in file-name order; the package is checked first."""
    with tarfile.open(package) as archive:
        manifest = json.load(archive.extractfile("package/package.json"))
        assert (manifest["name"], manifest["version"]) == ("hl7.fhir.r4.core", "4.0.1"), manifest
        for member in sorted(archive.getmembers(), key=lambda m: m.name):
            name = member.name.rsplit("/", 1)[-1]
            if name.startswith("StructureDefinition-") and name.endswith(".json"):
                yield json.load(archive.extractfile(member))
