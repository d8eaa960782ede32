"""Standard Python FHIR clients against a running Renraku (manual interoperability check).

    pip install fhirclient fhirpy "fhir.resources==6.5.0" requests     # 6.5 is the R4 line
    python3 tests/clients/python_clients.py http://127.0.0.1:8080/ina/fhir

fhirclient (SMART Health IT, R4 models) creates, reads, updates, searches and pages, and
posts a transaction and a batch to the base (`[base]/`, as it does); fhirpy (beda.software)
creates, searches across types (`[base]?_type=`), and sends a transaction; fhir.resources
(pydantic R4 models) parses every response body the session produced.
Exits non-zero on the first failure.
"""
import sys
import uuid

import requests
from fhirclient import client
from fhirclient.models import fhirreference, humanname, identifier, patient

base = sys.argv[1].rstrip("/")
# An access token (the demo's doctor of 伊那市 by default) and the Organization it acts for,
# which registers the Patients created here.
token = sys.argv[2] if len(sys.argv) > 2 else "demo-doctor-ina"
organization = sys.argv[3] if len(sys.argv) > 3 else "demo-ina-central-hospital"
requests_session = requests.Session()
requests_session.headers["Authorization"] = f"Bearer {token}"
seen = []  # (resourceType, json) of responses, parsed with fhir.resources afterwards


def record(response):
    response.raise_for_status()
    body = response.json()
    seen.append(body)
    return body


smart = client.FHIRClient(settings={"app_id": "renraku-check", "api_base": base + "/"})
smart.server.session.headers["Authorization"] = f"Bearer {token}"
statement = record(requests_session.get(base + "/metadata"))
assert statement["fhirVersion"] == "4.0.1"

system = "urn:renraku:client-check:" + uuid.uuid4().hex
created_ids = []
for n in range(5):
    person = patient.Patient()
    name = humanname.HumanName()
    name.family = "山田"
    name.given = [f"太郎{n}"]
    person.name = [name]
    ident = identifier.Identifier()
    ident.system = system
    ident.value = str(n)
    person.identifier = [ident]
    person.gender = "male"
    registrar = fhirreference.FHIRReference()
    registrar.reference = f"Organization/{organization}"
    person.managingOrganization = registrar
    result = person.create(smart.server)
    created_ids.append(result["id"])

read = patient.Patient.read(created_ids[0], smart.server)
assert read.name[0].family == "山田", read.as_json()
read.gender = "female"
read.update(smart.server)
again = patient.Patient.read(created_ids[0], smart.server)
assert again.gender == "female" and again.meta.versionId == "2", again.as_json()

search = patient.Patient.where(struct={"identifier": f"{system}|", "_count": "2"})
found = list(search.perform_resources_iter(smart.server))
assert sorted(p.id for p in found) == sorted(created_ids), (len(found), created_ids)

bundle = record(requests_session.get(f"{base}/Patient", params={"identifier": f"{system}|", "_count": 2}))
record(requests_session.get(f"{base}/Patient/{created_ids[0]}"))
record(requests_session.get(f"{base}/Patient/{created_ids[0]}/_history"))
# Transactions and batches as fhirclient sends them: to the base with its trailing slash.
def person_entry(value):
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": {"resourceType": "Patient", "identifier": [{"system": system, "value": value}], "name": [{"family": "鈴木"}],
                     "managingOrganization": {"reference": f"Organization/{organization}"}},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={system}|{value}"},
    }


transaction = smart.server.post_json("", {"resourceType": "Bundle", "type": "transaction", "entry": [person_entry("t1"), person_entry("t2")]}).json()
seen.append(transaction)
assert transaction["type"] == "transaction-response", transaction
assert [e["response"]["status"][:3] for e in transaction["entry"]] == ["201", "201"], transaction
batch = smart.server.post_json("", {"resourceType": "Bundle", "type": "batch", "entry": [
    person_entry("t1"),  # exists: the conditional create answers 200
    {"request": {"method": "GET", "url": f"Patient?identifier={system}|t2"}},
    {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
]}).json()
seen.append(batch)
assert [e["response"]["status"][:3] for e in batch["entry"]] == ["200", "200", "404"], batch

# fhirpy: create, system search, a transaction.
from fhirpy import SyncFHIRClient  # noqa: E402

fhirpy = SyncFHIRClient(base, authorization=f"Bearer {token}")
made = fhirpy.resource("Patient", identifier=[{"system": system, "value": "py1"}], name=[{"family": "高橋"}],
                       managingOrganization={"reference": f"Organization/{organization}"})
made.save()
across = fhirpy.resources("Patient").search(identifier=f"{system}|py1").fetch_all()
assert [p.id for p in across] == [made.id], across
system_search = record(requests_session.get(f"{base}/", params={"_type": "Patient", "identifier": f"{system}|py1"}))
assert [e["resource"]["id"] for e in system_search["entry"]] == [made.id], system_search
answer = fhirpy.execute("", method="post", data={"resourceType": "Bundle", "type": "transaction", "entry": [person_entry("py2")]})
assert answer["entry"][0]["response"]["status"].startswith("201"), answer

outcome = requests_session.post(f"{base}/Patient", json={"resourceType": "Patient", "gender": "robot"},
                        headers={"Content-Type": "application/fhir+json"})
assert outcome.status_code == 422
seen.append(outcome.json())

from fhir.resources import construct_fhir_element  # noqa: E402  (fhir.resources 6.5 = R4)

for body in seen:
    construct_fhir_element(body["resourceType"], body)
print(f"python clients: fhirclient create/read/update/search/page/transaction/batch OK; fhirpy create/search/system search/transaction OK; "
      f"fhir.resources parsed {len(seen)} responses")
