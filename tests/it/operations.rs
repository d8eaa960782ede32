//! What operators use: liveness, readiness and the Prometheus metrics.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::both_backends;
use crate::nodes::Node;
use crate::support::{new_database, Backend, Server};

/// The value of the sample `name{labels}` in a Prometheus text exposition (0 when absent).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .find(|(series, _)| {
            series.split('{').next() == Some(name) && labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|(_, value)| value.parse().ok())
        .unwrap_or(0.0)
}

async fn liveness_and_readiness(backend: Backend) {
    let server = Server::start(backend).await;
    let live = server.get_with("/livez", &[("authorization", "none")]).await;
    live.expect(200);
    assert_eq!(live.text(), "alive");
    let ready = server.get_with("/healthz", &[("authorization", "none")]).await;
    ready.expect(200);
    let checks = &ready.json()["checks"];
    for check in ["database", "migrations", "background", "accepting"] {
        assert_eq!(checks[check], "ok", "{check}");
    }
    // Once shutdown begins, the gateway is alive but no longer ready.
    server.fhir().start_draining();
    let draining = server.get_with("/healthz", &[("authorization", "none")]).await;
    draining.expect(503);
    assert_eq!(draining.json()["checks"]["accepting"], "failing");
    server.get_with("/livez", &[("authorization", "none")]).await.expect(200);
    // Without a metrics token the endpoint is off.
    let off = server.get_with("/metrics", &[("authorization", "none")]).await;
    off.expect(404);
    assert_eq!(off.json()["resourceType"], "OperationOutcome");
}

/// A known request mix, scraped before and after: the counts move by exactly that much,
/// by route template — never by raw URL, which would carry ids and names.
async fn metrics_count_a_known_request_mix(backend: Backend) {
    let server = Server::start_with(backend, |config| config.metrics_token = Some("scrape-me".into())).await;
    let scrape = || async {
        let reply = server.get_with("/metrics", &[("authorization", "Bearer scrape-me")]).await;
        reply.expect(200);
        assert!(reply.header("content-type").unwrap_or_default().starts_with("text/plain"));
        reply.text()
    };
    server.get_with("/metrics", &[("authorization", "none")]).await.expect(401);
    server.get_with("/metrics", &[("authorization", "Bearer wrong")]).await.expect(401);
    let person = server.create("ina", &json!({ "resourceType": "Patient", "name": [{ "family": "山田" }] })).await;
    let before = scrape().await;
    let read = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET"), ("interaction", "read"), ("status", "200")];
    let missing = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET"), ("status", "404")];
    let searched = [("route", "/{tenant}/fhir/{resource_type}"), ("method", "GET"), ("interaction", "search-type"), ("status", "200")];
    for _ in 0..3 {
        server.get(&format!("/ina/fhir/Patient/{person}")).await.expect(200);
    }
    for _ in 0..2 {
        server.get("/ina/fhir/Patient/nobody-here").await.expect(404);
    }
    server.get("/ina/fhir/Patient?family=山田").await.expect(200);
    server.get("/nowhere-at-all").await.expect(404);
    let after = scrape().await;
    let moved = |labels: &[(&str, &str)]| sample(&after, "renraku_http_requests_total", labels) - sample(&before, "renraku_http_requests_total", labels);
    assert_eq!(moved(&read), 3.0, "{after}");
    assert_eq!(moved(&missing), 2.0);
    assert_eq!(moved(&searched), 1.0);
    assert_eq!(moved(&[("route", "unmatched"), ("status", "404")]), 1.0);
    let latency = [("route", "/{tenant}/fhir/{resource_type}/{id}"), ("method", "GET")];
    assert!(sample(&after, "renraku_http_request_duration_seconds_count", &latency) >= 5.0, "{after}");
    // Ids, names and search strings stay out of the labels.
    for private in [person.as_str(), "nobody-here", "山田", "family", "nowhere-at-all"] {
        assert!(!after.contains(private), "{private} in the metrics");
    }
    // Read when scraped: the pool, the journal's lag, the token lookups.
    assert!(sample(&after, "renraku_db_pool_connections", &[("state", "open")]) >= 1.0);
    assert!(after.contains("renraku_audit_journal_unprojected_events"));
    let lookups = |text: &str| {
        sample(text, "renraku_token_lookups_total", &[("source", "cache")]) + sample(text, "renraku_token_lookups_total", &[("source", "database")])
    };
    assert!(lookups(&after) - lookups(&before) >= 6.0, "every authenticated request looked its token up: {} then {}\n{after}", lookups(&before), lookups(&after));
}

/// `--log-format json`: one JSON object per line, and per request a line with its id, the
/// municipality, the route template and the status — never the URL's ids or search strings.
/// (The log format is the process's, not the database's: one backend suffices.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_name_the_route_not_the_url() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let log_path = directory.path().join("gateway.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["serve", "--demo", "--log-format", "json", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(directory.path())
        .env("RENRAKU_LOG", "info")
        .stdout(log)
        .spawn()
        .expect("the renraku binary starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..300 {
        if http.get(format!("{base}/healthz")).send().await.is_ok_and(|r| r.status().is_success()) {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let search = http.get(format!("{base}/ina/fhir/Patient?name=%E3%82%84%E3%81%BE%E3%81%A0")).bearer_auth("demo-doctor-ina").send().await;
    let status = search.map(|r| r.status().as_u16()).unwrap_or_default();
    // The request's line is written after the response; wait for it (the suite runs many
    // processes at once), then stop the gateway and read whole lines only.
    for _ in 0..100 {
        if std::fs::read_to_string(&log_path).is_ok_and(|text| text.contains("\"renraku::request\"")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(ready, "the gateway became ready");
    assert_eq!(status, 200);
    let text = std::fs::read_to_string(&log_path).expect("the log");
    let lines: Vec<serde_json::Value> =
        text.lines().filter(|line| !line.is_empty()).map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}"))).collect();
    assert!(!lines.is_empty());
    let request = lines
        .iter()
        .find(|line| line["target"] == "renraku::request" && line["route"] == "/{tenant}/fhir/{resource_type}")
        .unwrap_or_else(|| panic!("a request line: {text}"));
    assert_eq!(request["tenant"], "ina");
    assert_eq!(request["status"], 200);
    assert_eq!(request["method"], "GET");
    assert_eq!(request["principal"], "practitioner");
    assert!(request["request_id"].as_str().is_some_and(|id| id.len() == 36), "{request}");
    assert!(request["latency_ms"].as_f64().is_some());
    for private in ["やまだ", "%E3%82%84", "name="] {
        assert!(!text.contains(private), "{private} in the log");
    }
}

/// A configuration file that is wrong stops start-up with a message naming the file, the
/// key and the reason (exit status 1, nothing served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_errors_name_the_file_the_key_and_the_reason() {
    let directory = tempfile::tempdir().expect("a temporary directory");
    let tenant = "[[tenants]]\nslug = \"ina\"\ncode = \"202096\"\nname = \"伊那市\"\n";
    let missing_keys = directory.path().join("no-such-keys.json");
    let client = |extra: &str| {
        format!("{tenant}\n[[clients]]\nclient_id = \"ehr\"\ntenant = \"ina\"\nkind = \"system\"\norganization = \"hospital\"\n{extra}")
    };
    // (the file's text, what the message must name besides the file)
    let cases: Vec<(String, Vec<&str>)> = vec![
        (format!("lisen = \"127.0.0.1:8080\"\n{tenant}"), vec!["unknown field `lisen`", "line 1"]),
        ("[[tenants]]\nslug = \"ina\"\ncode = \"202095\"\nname = \"伊那市\"\n".to_owned(), vec!["[[tenants]] 'ina'", "code: '202095'", "check digit"]),
        ("[[tenants]]\nslug = \"admin\"\ncode = \"202096\"\nname = \"伊那市\"\n".to_owned(), vec!["slug: 'admin' is reserved"]),
        (format!("{tenant}\n[limits]\nbundle_entries = \"many\"\n"), vec!["bundle_entries", "invalid type"]),
        (client(&format!("jwks_file = \"{}\"\n", missing_keys.display())), vec!["[[clients]] 'ehr'", "jwks_file", "no-such-keys.json", "No such file"]),
        (client("jwks = { keys = [] }\ntenant = \"nowhere\"\n"), vec!["duplicate key", "tenant"]),
        (client("jwks = { keys = [] }\nscopes = \"system/*.cruds\"\n").replace("tenant = \"ina\"\nkind", "tenant = \"minowa\"\nkind"), vec!["[[clients]] 'ehr'", "tenant: 'minowa' is not configured"]),
    ];
    for (index, (text, expected)) in cases.iter().enumerate() {
        let file = directory.path().join(format!("renraku-{index}.toml"));
        std::fs::write(&file, text).expect("the file is written");
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_renraku"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&file)
            .arg("--data-dir")
            .arg(directory.path())
            .output()
            .expect("the binary runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "case {index} must not start: {stderr}");
        assert!(stderr.contains(&file.display().to_string()), "case {index} names the file: {stderr}");
        for part in expected {
            assert!(stderr.contains(part), "case {index} names {part:?}: {stderr}");
        }
    }
    // The same client with a key file that exists starts (a command that starts the gateway
    // on the configuration and ends).
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("demo/keys/ehr-ina-jwks.json");
    let file = directory.path().join("renraku-good.toml");
    std::fs::write(&file, client(&format!("jwks_file = \"{}\"\n", keys.display()))).expect("the file is written");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_renraku"))
        .args(["admin", "client", "list", "--config"])
        .arg(&file)
        .arg("--data-dir")
        .arg(directory.path())
        .output()
        .expect("the binary runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

/// A request the gateway answered with success: its request id, and a write's Location.
type Acknowledged = (String, Option<String>);

/// SIGTERM in the middle of a stream of writes and reads by a care manager: the gateway
/// stops accepting, finishes what is in flight and exits cleanly, and every request it
/// acknowledged is durable (the writes read back after a restart) and audited (its request
/// id is in the municipality's trail).
async fn sigterm_loses_nothing_acknowledged(backend: Backend) {
    let (config, directory, database) = new_database(backend).await;
    let data_dir = directory.path().to_string_lossy().into_owned();
    let settings = ["--demo", "--database-url", config.database_url.as_str(), "--data-dir", data_dir.as_str()];
    let mut node = Node::serve(&settings).await;
    let base = node.base.clone();
    // (request id, the created resource's location for writes)
    let acknowledged: Arc<Mutex<Vec<Acknowledged>>> = Arc::default();
    let workers: Vec<_> = (0..4)
        .map(|worker| {
            let (base, acknowledged) = (base.clone(), acknowledged.clone());
            tokio::spawn(async move {
                let http = reqwest::Client::new();
                for round in 0..10_000 {
                    let request = if (worker + round) % 2 == 0 {
                        let note = json!({
                            "resourceType": "Communication", "status": "completed",
                            "subject": { "reference": "Patient/demo-yamada-taro" },
                            "payload": [{ "contentString": format!("訪問記録 {worker}-{round}") }]
                        });
                        http.post(format!("{base}/minamiminowa/fhir/Communication"))
                            .header("content-type", "application/fhir+json")
                            .body(note.to_string())
                    } else {
                        http.get(format!("{base}/minamiminowa/fhir/Patient/demo-yamada-taro"))
                    };
                    let Ok(reply) = request.bearer_auth("demo-care-manager").send().await else { break };
                    if !reply.status().is_success() {
                        continue;
                    }
                    let id = reply.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
                    let location = reply.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
                    if let Ok(mut list) = acknowledged.lock() {
                        list.push((id, location));
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let status = std::process::Command::new("kill").args(["-TERM", &node.pid().to_string()]).status().expect("kill runs");
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let exit = node.wait();
        (node, exit)
    });
    for worker in workers {
        worker.await.expect("the worker ends when the gateway stops answering");
    }
    let (node, exit) = exit.await.expect("the gateway exits");
    assert!(exit.success(), "a clean exit after SIGTERM: {exit:?}");
    drop(node);
    let acknowledged = acknowledged.lock().map(|list| list.clone()).unwrap_or_default();
    assert!(acknowledged.len() >= 20, "the stream was under way: {} acknowledged", acknowledged.len());

    // After a restart: every acknowledged write reads back, every acknowledged request is in
    // the trail.
    let node = Node::serve(&settings).await;
    let http = reqwest::Client::new();
    for (_, location) in &acknowledged {
        let Some(location) = location else { continue };
        // The first gateway's port is gone: the same path at the new one.
        let path = location.split("/_history").next().and_then(|url| url.find("/minamiminowa/").map(|at| &url[at..])).unwrap_or_default();
        let reply = http.get(format!("{}{path}", node.base)).bearer_auth("demo-care-manager").send().await.expect("a reply");
        assert_eq!(reply.status().as_u16(), 200, "{path}");
    }
    let mut recorded: HashSet<String> = HashSet::new();
    let mut next = Some(format!("{}/minamiminowa/fhir/AuditEvent?_count=1000", node.base));
    while let Some(url) = next.take() {
        let page: Value = http.get(&url).bearer_auth("demo-auditor-minamiminowa").send().await.expect("a reply").json().await.expect("a Bundle");
        for entry in page["entry"].as_array().into_iter().flatten() {
            for entity in entry["resource"]["entity"].as_array().into_iter().flatten() {
                if entity["type"]["code"] == "XrequestId" {
                    recorded.insert(entity["what"]["identifier"]["value"].as_str().unwrap_or_default().to_owned());
                }
            }
        }
        next = page["link"].as_array().into_iter().flatten().find(|l| l["relation"] == "next").and_then(|l| l["url"].as_str()).map(str::to_owned);
    }
    let missing: Vec<&String> = acknowledged.iter().map(|(id, _)| id).filter(|id| !recorded.contains(*id)).collect();
    assert!(missing.is_empty(), "{} of {} acknowledged requests are not in the trail: {missing:?}", missing.len(), acknowledged.len());
    drop(node);
    if let Some(name) = database {
        crate::support::drop_database(name);
    }
}

/// A request's token is verified on a pooled connection, which the request keeps for its
/// first read instead of giving it back (each connection given back is checked by the pool:
/// a round trip). Observed through the pool's idle count: the read takes no other connection;
/// another store does not take it; a write gives it back before it waits for its own; outside
/// a request nothing is kept; what a request still keeps goes back when it ends. On
/// PostgreSQL a connection given back during a request is kept for its next read (settling it
/// would cost a round trip more); what a request abandoned by its timeout or dropped by its
/// client kept is settled and goes back.
async fn a_request_reads_on_the_connection_its_token_was_verified_on(backend: Backend) {
    use renraku::store::{with_request_connection, Store};
    let server = Server::start(backend).await;
    let store = Store::connect(server.database_url()).await.expect("a store");
    let other = Store::connect(server.database_url()).await.expect("another store");
    let idle_when_settled = |store: &Store| {
        let store = store.clone();
        async move {
            // Connections go back to the pool in a task of their own.
            for _ in 0..200 {
                let (size, idle) = store.pool_usage();
                if idle == size as usize {
                    return idle;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("the pool's connections did not all come back: {:?}", store.pool_usage());
        }
    };
    // Two connections open, both idle.
    let (first, second) = (store.connection().await.expect("a connection"), store.connection().await.expect("a connection"));
    drop((first, second));
    let idle = idle_when_settled(&store).await;
    assert!(idle >= 2);

    with_request_connection(async {
        let verified = store.connection().await.expect("the verification's connection");
        store.keep_for_request(verified);
        assert_eq!(store.pool_usage().1, idle - 1, "kept, not given back");
        // Another store's session does not take it.
        drop(other.connection().await.expect("another store's connection"));
        let read = store.connection().await.expect("the read's connection");
        assert_eq!(store.pool_usage().1, idle - 1, "the read took the kept connection, no other");
        drop(read);
        if backend == Backend::Postgres {
            // Given back during the request, a PostgreSQL connection is kept for the request's
            // next read (no settling round trip), until the request is done with the database.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            assert_eq!(store.pool_usage().1, idle - 1, "kept for the request's next read");
            let again = store.connection().await.expect("the next read's connection");
            assert_eq!(store.pool_usage().1, idle - 1, "the next read took it, no other");
            drop(again);
            renraku::store::release_request_connection();
        }
        assert_eq!(idle_when_settled(&store).await, idle);

        // A write gives the kept connection back before it takes its own.
        store.keep_for_request(store.connection().await.expect("a connection"));
        let transaction = store.begin().await.expect("a transaction");
        transaction.commit().await.expect("committed");
        assert_eq!(idle_when_settled(&store).await, idle);
        assert_eq!(store.pool_usage().1, idle, "nothing kept after the write");

        // A request abandoned by its timeout settles what it kept: back in the pool after the
        // check.
        store.keep_for_request(store.connection().await.expect("a connection"));
        renraku::store::abandon_request_connection();
        assert_eq!(idle_when_settled(&store).await, idle, "settled and given back");

        // Kept until the request ends.
        store.keep_for_request(store.connection().await.expect("a connection"));
    })
    .await;
    assert_eq!(idle_when_settled(&store).await, idle, "given back when the request ended");

    // A request dropped before its end (its client went away) settles what it kept.
    let dropped = with_request_connection(async {
        drop(store.connection().await.expect("a connection"));
        store.keep_for_request(store.connection().await.expect("a connection"));
        std::future::pending::<()>().await;
    });
    assert!(tokio::time::timeout(std::time::Duration::from_millis(100), dropped).await.is_err(), "still running");
    assert_eq!(idle_when_settled(&store).await, idle, "settled when the request was dropped");

    // Outside a request there is nowhere to keep it: it goes back.
    store.keep_for_request(store.connection().await.expect("a connection"));
    assert_eq!(idle_when_settled(&store).await, idle);
    store.close().await;
    other.close().await;
}

both_backends!(
    liveness_and_readiness,
    metrics_count_a_known_request_mix,
    sigterm_loses_nothing_acknowledged,
    a_request_reads_on_the_connection_its_token_was_verified_on
);

/// The SQLite linked in is built as `.cargo/config.toml` asks: without allocation counting and
/// with a page cache of each connection's own. libsqlite3-sys builds its bundle with
/// `SQLITE_ENABLE_MEMORY_MANAGEMENT`, which shares one page cache among all connections behind
/// one process-wide mutex, and SQLite counts allocations behind another; under audited reads
/// the connection threads waited on the two for about a tenth of the gateway's samples
/// (benches/README.md, session 25). A build that loses the setting fails here rather than
/// only in a benchmark. About the engine itself.
#[tokio::test]
async fn sqlite_is_built_without_process_wide_locks_for_pages_and_allocations() {
    // The library linked in is the gateway's: a bare in-memory connection reads its options.
    sqlx::any::install_default_drivers();
    let mut connection = <sqlx::AnyConnection as sqlx::Connection>::connect("sqlite::memory:").await.expect("an in-memory SQLite");
    let options: Vec<String> =
        sqlx::query_scalar("PRAGMA compile_options").fetch_all(&mut connection).await.expect("SQLite's compile options");
    assert!(options.iter().any(|option| option == "DEFAULT_MEMSTATUS=0"), "allocations are counted: {options:?}");
    assert!(!options.iter().any(|option| option == "ENABLE_MEMORY_MANAGEMENT"), "one page cache for all connections: {options:?}");
}

/// What autovacuum's analyze would do, for a PostgreSQL server without it (this machine's
/// runs so): after a bulk load the changed tables are analyzed, and then nothing is until
/// they change again. (The engine itself is under test: the unrestricted principal writes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_tables_get_fresh_statistics_on_postgres() {
    let server = Server::start(Backend::Postgres).await;
    let store = &server.fhir().store;
    store.analyze_changed_tables().await.expect("a first pass");
    let entries: Vec<Value> = (0..600)
        .map(|n| json!({ "resource": { "resourceType": "Patient", "name": [{ "family": format!("統計{n}") }] }, "request": { "method": "POST", "url": "Patient" } }))
        .collect();
    server.post("/ina/fhir", &json!({ "resourceType": "Bundle", "type": "transaction", "entry": entries })).await.expect(200);
    // The transaction's audit event, projected now rather than by the background task.
    server.fhir().project_audit_events().await.expect("projected");
    // PostgreSQL publishes a session's counts of changed rows when it goes idle, at most once
    // a second (else up to ten seconds later): wait for them.
    let mut analyzed = Vec::new();
    for _ in 0..120 {
        analyzed.extend(store.analyze_changed_tables().await.expect("analyzed"));
        if ["resources", "resource_versions", "search_string"].iter().all(|t| analyzed.iter().any(|a| a == t)) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    for table in ["resources", "resource_versions", "search_string"] {
        assert!(analyzed.iter().any(|t| t == table), "{table} among {analyzed:?}");
    }
    // Analysed, they are fresh: the next pass leaves them alone (another session's counts,
    // published late, may still name other tables).
    let again = store.analyze_changed_tables().await.expect("a pass");
    for table in ["resources", "resource_versions", "search_string"] {
        assert!(!again.iter().any(|t| t == table), "{table} analysed again: {again:?}");
    }
}
