"""Derives profiles/base/required-bindings.json from the FHIR R4 core package (4.0.1).

Every element of the R4 resources and data types whose binding strength is `required` and
whose type is `code`, `Coding` or `CodeableConcept` is listed with the codes of its value
set, expanded from the package's own ValueSets and CodeSystems: whole code systems
(`include.system` without concepts or filters; nested concepts included), enumerated
concepts, and included value sets; excludes removed. A value set that needs what the package
does not hold (an external code system such as BCP-13 MIME types or BCP-47 languages, a
filter) cannot be expanded here: its elements are listed under "unchecked" with the reason,
and the validator leaves them to the schema.

Under "profiles", the same for the required bindings that R4's own profiles of resources add
(by profile URL and differential element id), which the profile compiler enforces.

Input: hl7.fhir.r4.core 4.0.1 as a .tgz (see conformance/tools/derive_search_parameters.py
for where it comes from). Usage: python3 derive_required_bindings.py hl7.fhir.r4.core.tgz OUTPUT
"""
import json
import sys
import tarfile

package, output = sys.argv[1], sys.argv[2]
structures, value_sets, code_systems = [], {}, {}
with tarfile.open(package) as archive:
    manifest = json.load(archive.extractfile("package/package.json"))
    assert (manifest["name"], manifest["version"]) == ("hl7.fhir.r4.core", "4.0.1"), manifest
    for member in archive.getmembers():
        name = member.name.rsplit("/", 1)[-1]
        if not name.endswith(".json") or "-" not in name:
            continue
        kind = name.split("-", 1)[0]
        if kind not in ("StructureDefinition", "ValueSet", "CodeSystem"):
            continue
        resource = json.load(archive.extractfile(member))
        if kind == "StructureDefinition":
            structures.append(resource)
        elif kind == "ValueSet":
            value_sets[resource["url"]] = resource
        else:
            code_systems[resource["url"]] = resource


class Unexpandable(Exception):
    pass


def concepts_of(concepts):
    for concept in concepts:
        yield concept["code"]
        yield from concepts_of(concept.get("concept", []))


def expand(url, seen=()):
    url = url.split("|", 1)[0]
    if url in seen:
        raise Unexpandable(f"{url} includes itself")
    value_set = value_sets.get(url)
    if value_set is None:
        raise Unexpandable(f"{url} is not in the package")
    codes = set()
    compose = value_set.get("compose", {})
    for include in compose.get("include", []):
        if include.get("filter"):
            raise Unexpandable(f"{url} filters {include.get('system')}")
        system = include.get("system")
        parts = []
        if system and include.get("concept"):
            parts.append({(system, c["code"]) for c in include["concept"]})
        elif system:
            code_system = code_systems.get(system)
            if code_system is None or code_system.get("content") != "complete":
                raise Unexpandable(f"{url} includes {system}, which the package does not hold whole")
            parts.append({(system, code) for code in concepts_of(code_system.get("concept", []))})
        # Several sources in one include are intersected (the FHIR ValueSet rules).
        parts.extend(expand(included, seen + (url,)) for included in include.get("valueSet", []))
        found = set.intersection(*parts) if parts else set()
        codes |= found
    for exclude in compose.get("exclude", []):
        if exclude.get("filter") or not exclude.get("concept"):
            raise Unexpandable(f"{url} excludes by filter or whole system")
        codes -= {(exclude["system"], c["code"]) for c in exclude["concept"]}
    return codes


def definition_name(parts):
    if len(parts) == 1:
        return parts[0]
    return parts[0] + "_" + parts[-1][0].upper() + parts[-1][1:]


bindings, unchecked = {}, {}
for structure in structures:
    if structure.get("derivation") != "specialization" or structure.get("kind") not in ("resource", "complex-type"):
        continue
    for element in structure["snapshot"]["element"]:
        binding = element.get("binding", {})
        types = [t["code"] for t in element.get("type", [])]
        parts = element["path"].split(".")
        if binding.get("strength") != "required" or len(parts) < 2 or parts[-1].endswith("[x]"):
            continue
        if len(types) != 1 or types[0] not in ("code", "Coding", "CodeableConcept"):
            continue
        if not element["path"].startswith(structure["type"] + "."):
            continue  # inherited from Element, DomainResource, …: listed once, at its own type
        key = definition_name(parts[:-1]) + "." + parts[-1]
        try:
            codes = expand(binding["valueSet"])
        except Unexpandable as problem:
            unchecked[key] = str(problem)
            continue
        if not codes:
            unchecked[key] = f"{binding['valueSet']} expands to nothing here"
            continue
        by_system = {}
        for system, code in sorted(codes):
            by_system.setdefault(system, []).append(code)
        bindings[key] = {"path": element["path"], "type": types[0], "valueSet": binding["valueSet"], "codes": by_system}

# The required bindings R4's own profiles of resources add (profiles/structure-definitions/
# core/), by profile URL and element id, for elements of type code, Coding or CodeableConcept.
profile_bindings = {}
for structure in structures:
    if structure.get("derivation") != "constraint" or structure.get("kind") != "resource":
        continue
    for element in structure["differential"]["element"]:
        binding = element.get("binding", {})
        types = [t["code"] for t in element.get("type", [])]
        if binding.get("strength") != "required" or len(types) != 1 or types[0] not in ("code", "Coding", "CodeableConcept"):
            continue
        try:
            codes = expand(binding["valueSet"])
        except Unexpandable as problem:
            unchecked[structure["url"] + "#" + element["id"]] = str(problem)
            continue
        by_system = {}
        for system, code in sorted(codes):
            by_system.setdefault(system, []).append(code)
        profile_bindings.setdefault(structure["url"], {})[element["id"]] = {
            "type": types[0], "valueSet": binding["valueSet"], "codes": by_system}

table = {
    "source": "hl7.fhir.r4.core#4.0.1; profiles/tools/derive_required_bindings.py",
    "bindings": dict(sorted(bindings.items())),
    "profiles": dict(sorted(profile_bindings.items())),
    "unchecked": dict(sorted(unchecked.items())),
}
with open(output, "w", encoding="utf-8") as target:
    json.dump(table, target, ensure_ascii=False, indent=1)
    target.write("\n")
print(f"{len(bindings)} required bindings, {sum(len(b) for b in profile_bindings.values())} of profiles, {len(unchecked)} left unchecked; written to {output}")
