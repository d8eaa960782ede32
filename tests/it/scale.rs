//! Actors connected to many persons (issue #13): a care office that registered 20,000
//! persons of 伊那市, and a visiting nurse of another office on every one of their support
//! teams (each person with an active sharing consent). Before the access links, every
//! person reached was read at each decision and bound into the SQL (the rendering table in
//! `store::query` pins that the predicate now binds the same few values whatever the
//! number); at this size reads, searches, counts and writes must still show each actor
//! exactly its own, and a withdrawn consent must act at the next request.

use renraku::service::generate::Volume;
use serde_json::json;

use crate::both_backends;
use crate::policy::{consent, practitioner};
use crate::support::{Backend, Server};

const PERSONS: usize = 20_000;

async fn an_actor_reaching_twenty_thousand_persons(backend: Backend) {
    let server = Server::start(backend).await;
    let registrar = practitioner(&server, "ina", "cm-many", "office-registrar", "user/*.cruds").await;
    let nurse = practitioner(&server, "ina", "nurse-many", "office-nursing", "user/*.cruds").await;
    let outsider = practitioner(&server, "ina", "nurse-other", "office-other", "user/*.cruds").await;
    let volume = Volume {
        patients: PERSONS,
        communications: 0,
        seed: 13,
        registrar: Some("office-registrar".into()),
        team_member: Some("PractitionerRole/role-nurse-many".into()),
    };
    server.fhir().generate("ina", volume).await.unwrap_or_else(|e| panic!("generate: {e}"));
    let last = format!("Patient/gen13-p{}", PERSONS - 1);

    // Everyone they reach, counted in the database, and nobody else's.
    let count = |reply: crate::support::Reply| reply.expect(200).json()["total"].as_u64();
    assert_eq!(count(registrar.get(&server, "Patient?_summary=count").await), Some(PERSONS as u64));
    assert_eq!(count(nurse.get(&server, "Patient?_summary=count").await), Some(PERSONS as u64));
    assert_eq!(count(outsider.get(&server, "Patient?_summary=count").await), Some(0));
    registrar.get(&server, &last).await.expect(200);
    nurse.get(&server, &last).await.expect(200);
    outsider.get(&server, &last).await.expect(404);

    // The nurse writes about a person she reaches, and reads it back; the registrar, not on
    // the team, registers but does not see clinical content; the outsider may not write.
    let observation = json!({
        "resourceType": "Observation", "status": "final",
        "code": { "coding": [{ "system": "http://loinc.org", "code": "8867-4" }] },
        "subject": { "reference": last },
        "valueQuantity": { "value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min" }
    });
    let created = nurse.post(&server, &observation).await;
    created.expect(201);
    let path = format!("Observation/{}", created.json()["id"].as_str().unwrap_or_default());
    nurse.get(&server, &path).await.expect(200);
    registrar.get(&server, &path).await.expect(404);
    outsider.get(&server, &path).await.expect(404);
    outsider.post(&server, &observation).await.expect(403);
    let search = format!("Observation?subject={last}");
    assert_eq!(nurse.search_ids(&server, &search).await, vec![path.clone()]);
    assert!(registrar.search_ids(&server, &search).await.is_empty());

    // The registrar withdraws one person's consent: that person leaves the nurse's reach at
    // the next request, the others stay.
    let mut withdrawn = consent("gen13-consent19999", &format!("gen13-p{}", PERSONS - 1), "inactive", "office-registrar");
    withdrawn["provision"] = json!({ "type": "permit" });
    registrar.put(&server, &withdrawn).await.expect(200);
    nurse.get(&server, &last).await.expect(404);
    nurse.get(&server, &path).await.expect(404);
    nurse.get(&server, "Patient/gen13-p0").await.expect(200);
    assert_eq!(count(nurse.get(&server, "Patient?_summary=count").await), Some(PERSONS as u64 - 1));
    registrar.get(&server, &last).await.expect(200);
}

both_backends!(an_actor_reaching_twenty_thousand_persons);
