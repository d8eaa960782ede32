//! The `renraku` command: parse the command line, resolve the configuration, serve.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use renraku::config::{Config, Overrides};
use renraku::Gateway;

/// mimalloc instead of glibc's allocator: under audited reads glibc's `malloc`/`free` (with
/// `malloc_consolidate`) took about a fifth of the gateway's CPU samples (benches/README.md,
/// session 14); the requests allocate many short-lived JSON values and strings across threads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "renraku", version, about = "FHIR R4 gateway for municipal home-care support platforms")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text for people or as JSON objects for log collectors.
    #[arg(long, global = true, env = "RENRAKU_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        settings: Settings,
        /// Benchmarks only (test-support builds): record no audit events, to measure the
        /// engine's ceiling.
        #[cfg(feature = "test-support")]
        #[arg(long, hide = true)]
        audit_off_for_benchmarks_only: bool,
    },
    /// Benchmarks only (test-support builds): write the HTTP benchmark's world (actors
    /// reaching each of `--sizes` persons) and print its actors as JSON lines.
    #[cfg(feature = "test-support")]
    #[command(hide = true)]
    BenchWorld {
        #[command(flatten)]
        settings: Settings,
        #[arg(long, default_value = "ina")]
        tenant: String,
        #[arg(long, value_delimiter = ',', default_value = "1,2000,20000")]
        sizes: Vec<usize>,
    },
    /// Rebuild the search index of every resource (after adding a custom SearchParameter).
    /// Give it the same settings as `serve`.
    Reindex(Settings),
    /// Generate synthetic data (Japanese names, identifiers, bulletin-board messages) for
    /// benchmarks, into one municipality.
    Generate {
        #[command(flatten)]
        settings: Settings,
        /// The municipality (tenant slug) that receives the data.
        #[arg(long, default_value = "ina")]
        tenant: String,
        /// How many Patients (and one Practitioner per 50 Patients).
        #[arg(long, default_value_t = 100_000)]
        patients: usize,
        /// How many Communications, spread over the Patients.
        #[arg(long, default_value_t = 2_000_000)]
        communications: usize,
        /// Seed of the deterministic generator (also prefixes the ids).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// An Organization id that registered every generated person (managingOrganization).
        #[arg(long)]
        registrar: Option<String>,
        /// A CareTeam member (`PractitionerRole/…` or `Organization/…`) put on an active
        /// support team of every generated person, each with an active sharing Consent.
        #[arg(long)]
        team_member: Option<String>,
    },
    /// Check the audit trail's hash chains, or export and prune events older than the
    /// retention period.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
    /// Credentials for automation acting as an administrator: backend-services clients of a
    /// municipality's administrator or auditor, or of the server administrator.
    Admin {
        #[command(subcommand)]
        action: AdminAction,
    },
    /// Convert what existing systems write into FHIR and send it to the gateway as a SMART
    /// Backend Services client (or, with --dry-run, write the Bundles as NDJSON).
    Import {
        #[command(subcommand)]
        source: ImportSource,
    },
    /// Print a signed client assertion (a JWT for SMART Backend Services' token request),
    /// valid for four minutes: a convenience for trying the token endpoint by hand.
    ClientAssertion {
        /// The client id (iss and sub).
        #[arg(long)]
        client_id: String,
        /// The token endpoint (aud), e.g. http://127.0.0.1:8080/ina/auth/token.
        #[arg(long)]
        audience: String,
        /// PKCS#8 PEM private key: RSA for RS384, P-384 for ES384.
        #[arg(long)]
        key: PathBuf,
        /// The key id registered in the client's JWK Set.
        #[arg(long)]
        kid: String,
    },
}

#[derive(clap::Subcommand)]
enum ImportSource {
    /// An SS-MIX2 standardized storage (ISO-2022-JP HL7 v2.5 files under
    /// ROOT/ID[1-3]/ID[4-6]/患者ID/診療日/データ種別/): ADT-00, PPR-01 and OMP-01 messages.
    Ssmix2 {
        #[command(flatten)]
        client: ImportClient,
        /// The hospital's 10-digit 医療機関コード (the patient identifier system's suffix).
        #[arg(long)]
        facility: String,
        /// The hospital's Organization on the gateway (`Organization/…`): the registrar of
        /// the persons its ADT-00 messages register.
        #[arg(long)]
        organization: Option<String>,
        /// The storage's root directory.
        root: PathBuf,
    },
    /// Care-plan CSV files of the ケアプランデータ連携 standard (4.1; MS932): 利用者補足情報
    /// (UPHOSOKU_…), 第1表 (UP1KYO_…), 第2表 (UP2KYO_…), 第6表 予定/実績 (UPPLAN_…, UPJSK_…).
    Careplan {
        #[command(flatten)]
        client: ImportClient,
        /// The care office's Organization on the gateway (`Organization/…`): the registrar
        /// of the persons its 利用者補足情報 registers.
        #[arg(long)]
        organization: Option<String>,
        /// The CSV files, read in the order the standard gives (person, plan, month).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// A municipality's directory roster (CSV with a header row; MS932 or UTF-8 with a BOM):
    /// offices, professionals and their roles, as the municipality's administrator.
    Roster {
        #[command(flatten)]
        client: ImportClient,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(clap::Args)]
struct ImportClient {
    /// The municipality's FHIR base URL, e.g. http://127.0.0.1:8080/ina/fhir.
    #[arg(long, required_unless_present = "dry_run")]
    base: Option<String>,
    /// The backend-services client id registered at the gateway.
    #[arg(long, required_unless_present = "dry_run")]
    client_id: Option<String>,
    /// The client's PKCS#8 PEM private key (RSA for RS384, P-384 for ES384).
    #[arg(long, required_unless_present = "dry_run")]
    key: Option<PathBuf>,
    /// The key id in the client's JWK Set (default: the key file's name without extension).
    #[arg(long)]
    kid: Option<String>,
    /// The scopes asked for.
    #[arg(long, default_value = "system/*.cruds")]
    scope: String,
    /// Only files whose 発生日時 is on or after this day (YYYYMMDD).
    #[arg(long)]
    since: Option<String>,
    /// The import's memory (what was sent); files sent before with the same content are
    /// skipped, so a second or interrupted run sends only what is new.
    #[arg(long, default_value = "renraku-import.state")]
    state: PathBuf,
    /// Read the mappings from this directory instead of the built-in `mappings/ssmix2/`.
    #[arg(long)]
    mappings: Option<PathBuf>,
    /// Convert only: write the transaction Bundles to OUT/bundles.ndjson.
    #[arg(long, requires = "out")]
    dry_run: bool,
    #[arg(long)]
    out: Option<PathBuf>,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
    /// How many persons to send side by side (SS-MIX2; each person's messages in order, one
    /// transaction at a time). Care-plan and roster files are sent in order, one at a time.
    #[arg(long, default_value_t = 4)]
    jobs: usize,
}

#[derive(clap::Subcommand)]
enum AuditAction {
    /// Walk every municipality's chain and report the first broken link (exit status 1).
    Verify {
        #[command(flatten)]
        settings: Settings,
        /// Only this chain (a municipality's slug, or `_server`).
        #[arg(long)]
        chain: Option<String>,
    },
    /// Export the events older than the retention period to NDJSON files, then remove them
    /// (the chains stay verifiable from their new anchors).
    Prune {
        #[command(flatten)]
        settings: Settings,
        /// Directory for the exported NDJSON files.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Subcommand)]
enum AdminAction {
    /// Administrator clients (SMART Backend Services, `client_credentials`).
    #[command(subcommand)]
    Client(AdminClientAction),
}

#[derive(clap::Subcommand)]
enum AdminClientAction {
    /// Register a client with a new key pair; its private key goes to --key-out (mode 0600),
    /// the public key into the registration. Recorded in the audit trail.
    Add {
        #[command(flatten)]
        settings: Settings,
        /// The role its tokens carry.
        #[arg(long, value_enum)]
        role: AdminRole,
        /// The municipality (slug) of a municipal administrator's or auditor's client.
        #[arg(long, required_if_eq_any([("role", "municipal-admin"), ("role", "municipal-auditor")]))]
        tenant: Option<String>,
        #[arg(long)]
        client_id: String,
        /// Where to write the private key (PKCS#8 PEM); must not exist yet.
        #[arg(long)]
        key_out: PathBuf,
        /// Space-separated system/ scopes [default: system/*.cruds; an auditor's
        /// system/AuditEvent.rs].
        #[arg(long)]
        scopes: Option<String>,
        /// A name shown in listings.
        #[arg(long, default_value = "")]
        name: String,
    },
    /// List the clients registered at run time (every kind), one per line.
    List {
        #[command(flatten)]
        settings: Settings,
    },
    /// Remove a client's registration; an administrator client's tokens are revoked with it.
    Revoke {
        #[command(flatten)]
        settings: Settings,
        /// The municipality (slug); omit for a server administrator's client.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long)]
        client_id: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AdminRole {
    MunicipalAdmin,
    MunicipalAuditor,
    ServerAdmin,
}

#[derive(clap::Args)]
struct Settings {
    /// Seed demo municipalities and data (伊那市, 南箕輪村, 箕輪町).
    #[arg(long, env = "RENRAKU_DEMO")]
    demo: bool,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "RENRAKU_LISTEN")]
    listen: Option<String>,
    /// Directory for the embedded SQLite database [default: ./renraku-data].
    #[arg(long, env = "RENRAKU_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// sqlite://… or postgres://… [default: SQLite in the data directory].
    #[arg(long, env = "RENRAKU_DATABASE_URL")]
    database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "RENRAKU_CONFIG")]
    config: Option<PathBuf>,
    /// Externally visible origin, e.g. https://renraku.example.jp [default: http://LISTEN].
    #[arg(long, env = "RENRAKU_PUBLIC_BASE_URL")]
    public_base_url: Option<String>,
    /// Largest accepted request body in bytes [default: 10485760].
    #[arg(long, env = "RENRAKU_BODY_LIMIT_BYTES")]
    body_limit_bytes: Option<usize>,
    /// Directory of custom SearchParameter JSON files.
    #[arg(long, env = "RENRAKU_SEARCH_PARAMETERS_DIR")]
    search_parameters_dir: Option<PathBuf>,
    /// Days audit events are kept before `audit prune` removes them [default: 1827].
    #[arg(long, env = "RENRAKU_AUDIT_RETENTION_DAYS")]
    audit_retention_days: Option<i64>,
    /// Bearer token for GET /metrics (Prometheus); without one the endpoint is off.
    #[arg(long, env = "RENRAKU_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
    /// After SIGTERM, milliseconds the requests in flight may take [default: 25000].
    #[arg(long, env = "RENRAKU_SHUTDOWN_GRACE_MS")]
    shutdown_grace_ms: Option<u64>,
}

impl Settings {
    fn overrides(self) -> Overrides {
        Overrides {
            listen: self.listen,
            data_dir: self.data_dir,
            database_url: self.database_url,
            public_base_url: self.public_base_url,
            body_limit_bytes: self.body_limit_bytes,
            search_parameters_dir: self.search_parameters_dir,
            config_file: self.config,
            demo: self.demo,
            audit_retention_days: self.audit_retention_days,
            metrics_token: self.metrics_token,
            shutdown_grace_ms: self.shutdown_grace_ms,
        }
    }
}

/// Worker threads get 8 MiB stacks: parsing and validating a FHIR resource recurse once per
/// nesting level, and `[limits]` bounds the levels well within this (see `Limits`).
const WORKER_STACK_BYTES: usize = 8 * 1024 * 1024;

fn main() -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_stack_size(WORKER_STACK_BYTES).build();
    match runtime {
        Ok(runtime) => runtime.block_on(run()),
        Err(error) => {
            eprintln!("renraku: cannot start the runtime: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("RENRAKU_LOG").unwrap_or_else(|_| "info".into());
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_env_filter(filter).init(),
        LogFormat::Json => tracing_subscriber::fmt().json().flatten_event(true).with_env_filter(filter).init(),
    }
    let result = match cli.command {
        #[cfg(not(feature = "test-support"))]
        Command::Serve { settings } => serve(settings.overrides(), false).await,
        #[cfg(feature = "test-support")]
        Command::Serve { settings, audit_off_for_benchmarks_only } => serve(settings.overrides(), audit_off_for_benchmarks_only).await,
        #[cfg(feature = "test-support")]
        Command::BenchWorld { settings, tenant, sizes } => bench_world(settings.overrides(), &tenant, &sizes).await,
        Command::Reindex(settings) => reindex(settings.overrides()).await,
        Command::Audit { action: AuditAction::Verify { settings, chain } } => audit_verify(settings.overrides(), chain.as_deref()).await,
        Command::Audit { action: AuditAction::Prune { settings, out } } => audit_prune(settings.overrides(), &out).await,
        Command::Admin { action: AdminAction::Client(action) } => admin_client(action).await,
        Command::ClientAssertion { client_id, audience, key, kid } => client_assertion(&client_id, &audience, &key, &kid),
        Command::Import { source: ImportSource::Ssmix2 { client, facility, organization, root } } => {
            import_ssmix2(client, facility, organization, &root).await
        }
        Command::Import { source: ImportSource::Careplan { client, organization, files } } => {
            let files = renraku::import::careplan_order(&files);
            import_csv(client, organization, &files).await
        }
        Command::Import { source: ImportSource::Roster { client, files } } => {
            let files: Vec<(PathBuf, String)> = files.into_iter().map(|file| (file, "roster".to_owned())).collect();
            import_csv(client, None, &files).await
        }
        Command::Generate { settings, tenant, patients, communications, seed, registrar, team_member } => {
            let volume = renraku::service::generate::Volume { patients, communications, seed, registrar, team_member };
            generate(settings.overrides(), &tenant, volume).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("renraku: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn generate(overrides: Overrides, tenant: &str, volume: renraku::service::generate::Volume) -> Result<(), String> {
    let config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    if gateway.state.fhir.tenant(tenant).is_none() {
        return Err(format!("no tenant '{tenant}' is configured"));
    }
    let started = std::time::Instant::now();
    let (patients, practitioners, communications) =
        gateway.state.fhir.generate(tenant, volume).await.map_err(|e| e.to_string())?;
    println!(
        "generated {patients} Patients, {practitioners} Practitioners and {communications} Communications in {tenant} in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn admin_client(action: AdminClientAction) -> Result<(), String> {
    use renraku::identity::clients::{Role, SERVER_CLIENTS};
    match action {
        AdminClientAction::Add { settings, role, tenant, client_id, key_out, scopes, name } => {
            let (role, tenant) = match role {
                AdminRole::ServerAdmin => (Role::ServerAdmin, SERVER_CLIENTS.to_owned()),
                AdminRole::MunicipalAdmin => (Role::MunicipalAdmin, tenant.unwrap_or_default()),
                AdminRole::MunicipalAuditor => (Role::MunicipalAuditor, tenant.unwrap_or_default()),
            };
            // The key file is claimed first, so an existing file is never overwritten and a
            // failed registration leaves no key behind.
            let mut file = create_private_file(&key_out)?;
            let gateway = Gateway::start(Config::resolve(settings.overrides()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
            let fhir = &gateway.state.fhir;
            let context = operator_context(&gateway, &tenant);
            let request = renraku::admin::AdministratorClient { client_id, tenant: tenant.clone(), role, scopes, name };
            let registered = renraku::admin::register_administrator_client(fhir, &context, request).await;
            let (client, private_pem) = match registered {
                Ok(registered) => registered,
                Err(error) => {
                    drop(file);
                    let _ = std::fs::remove_file(&key_out);
                    return Err(error.to_string());
                }
            };
            std::io::Write::write_all(&mut file, private_pem.as_bytes()).map_err(|e| format!("{}: {e}", key_out.display()))?;
            let kid = client.jwks.as_ref().and_then(|j| j.pointer("/keys/0/kid")).and_then(|k| k.as_str()).unwrap_or_default();
            let endpoint = if tenant == SERVER_CLIENTS { "{tenant}".to_owned() } else { tenant.clone() };
            println!("registered {} client '{}' at {tenant}", role.as_str(), client.client_id);
            println!("  scopes:         {}", client.scopes);
            println!("  private key:    {} (RS384, kid {kid}; keep it secret)", key_out.display());
            println!("  token endpoint: {}/{endpoint}/auth/token", gateway.state.config.public_base_url);
            Ok(())
        }
        AdminClientAction::List { settings } => {
            let gateway = Gateway::start(Config::resolve(settings.overrides()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
            let context = operator_context(&gateway, renraku::identity::clients::SERVER_CLIENTS);
            for client in renraku::admin::stored_clients(&gateway.state.fhir, &context).await.map_err(|e| e.to_string())? {
                let roles: Vec<&str> = client.roles.iter().map(|r| r.as_str()).collect();
                let kind = serde_json::to_value(client.kind).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default();
                let waiting = if client.awaits_approval() { " (awaits approval)" } else { "" };
                println!("{}\t{}\t{kind}\t{}\t{}{waiting}", client.tenant, client.client_id, roles.join(","), client.scopes);
            }
            Ok(())
        }
        AdminClientAction::Revoke { settings, tenant, client_id } => {
            let tenant = tenant.unwrap_or_else(|| SERVER_CLIENTS.to_owned());
            let gateway = Gateway::start(Config::resolve(settings.overrides()).map_err(|e| e.to_string())?).await.map_err(|e| e.to_string())?;
            let context = operator_context(&gateway, &tenant);
            renraku::admin::remove_client(&gateway.state.fhir, &context, &tenant, &client_id).await.map_err(|e| e.to_string())?;
            println!("removed client '{client_id}' at {tenant}");
            Ok(())
        }
    }
}

/// The operator at the command line, acting at `tenant`'s base (the server's for `_server`).
fn operator_context(gateway: &Gateway, tenant: &str) -> renraku::identity::Context {
    let base_url = gateway.state.config.base_url(tenant);
    renraku::identity::Context::operator(tenant, base_url, &format!("cli-{}", uuid::Uuid::new_v4().simple()))
}

/// Creates `path` for a private key: readable by its owner only, never replacing a file.
fn create_private_file(path: &std::path::Path) -> Result<std::fs::File, String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn client_assertion(client_id: &str, audience: &str, key: &std::path::Path, kid: &str) -> Result<(), String> {
    let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    println!("{}", renraku::import::sign_client_assertion(client_id, audience, &pem, kid)?);
    Ok(())
}

async fn import_ssmix2(client: ImportClient, facility: String, organization: Option<String>, root: &std::path::Path) -> Result<(), String> {
    if facility.len() != 10 || !facility.chars().all(|c| c.is_ascii_digit()) {
        return Err(format!("--facility '{facility}' is not a 10-digit 医療機関コード"));
    }
    let (options, target) = import_settings(client, facility, organization)?;
    report(renraku::import::ssmix2(root, &options, &target).await?)
}

async fn import_csv(client: ImportClient, organization: Option<String>, files: &[(PathBuf, String)]) -> Result<(), String> {
    let (options, target) = import_settings(client, String::new(), organization)?;
    report(renraku::import::csv_files(files, &options, &target).await?)
}

/// The import's options and where its Bundles go, from the command line.
fn import_settings(client: ImportClient, facility: String, organization: Option<String>) -> Result<(renraku::import::Options, renraku::import::Target), String> {
    use renraku::import::{self, mapping::Mappings, Options, Target};
    let mappings = match &client.mappings {
        Some(directory) => Mappings::from_directory(directory)?,
        None => Mappings::builtin(),
    };
    let target = match (client.dry_run, client.out, client.base, client.client_id, client.key) {
        (true, Some(out), ..) => Target::Files(out),
        (false, _, Some(base), Some(client_id), Some(key)) => {
            let kid = client.kid.unwrap_or_else(|| key.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default());
            Target::Gateway(import::Gateway { base, client_id, key, kid, scope: client.scope })
        }
        _ => return Err("give --base, --client-id and --key, or --dry-run --out DIR".to_owned()),
    };
    let options = Options { facility, organization, since: client.since, state: client.state, mappings, progress: !client.quiet, jobs: client.jobs };
    Ok((options, target))
}

/// Prints the summary; anything rejected makes the exit status 1.
fn report(summary: renraku::import::Summary) -> Result<(), String> {
    print!("{summary}");
    if summary.rejected.is_empty() {
        Ok(())
    } else {
        Err(format!("{} rejected", summary.rejected.len()))
    }
}

async fn audit_verify(overrides: Overrides, chain: Option<&str>) -> Result<(), String> {
    let config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let reports = gateway.state.fhir.verify_audit_trail(chain).await.map_err(|e| e.to_string())?;
    let mut broken = Vec::new();
    for report in &reports {
        match &report.broken {
            None => println!("{}: {} events verified; head {}", report.chain, report.events, report.head),
            Some(found) => {
                println!("{}: BROKEN after {} good events: {found}", report.chain, report.events);
                broken.push(found.to_string());
            }
        }
    }
    if broken.is_empty() {
        Ok(())
    } else {
        Err(format!("the audit trail does not verify: {}", broken.join("; ")))
    }
}

async fn audit_prune(overrides: Overrides, out: &std::path::Path) -> Result<(), String> {
    let config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    let days = config.audit_retention_days;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let reports = gateway.state.fhir.prune_audit_trail(out).await.map_err(|e| e.to_string())?;
    if reports.is_empty() {
        println!("nothing is older than the retention period ({days} days)");
    }
    for report in reports {
        println!("{}: {} events exported to {} and removed", report.chain, report.removed, report.file.display());
    }
    Ok(())
}

async fn reindex(overrides: Overrides) -> Result<(), String> {
    let config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let count = gateway.state.fhir.reindex().await.map_err(|e| e.to_string())?;
    println!("reindexed {count} resources");
    Ok(())
}

#[cfg(feature = "test-support")]
async fn bench_world(overrides: Overrides, tenant: &str, sizes: &[usize]) -> Result<(), String> {
    let config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let actors = renraku::benchmark::world(&gateway.state.fhir, tenant, sizes).await.map_err(|e| e.to_string())?;
    gateway.state.fhir.store.optimize().await.map_err(|e| e.to_string())?;
    for actor in actors {
        let line = serde_json::json!({
            "label": actor.label, "size": actor.size, "token": actor.token,
            "organization": actor.organization, "role": actor.role, "measured": actor.measured
        });
        println!("{line}");
    }
    Ok(())
}

async fn serve(overrides: Overrides, audit_off: bool) -> Result<(), String> {
    let mut config = Config::resolve(overrides).map_err(|e| e.to_string())?;
    config.audit_off_for_benchmarks_only = audit_off;
    let listen = config.listen;
    let demo = config.demo;
    let grace = std::time::Duration::from_millis(config.shutdown_grace_ms);
    let gateway = Gateway::start(config).await.map_err(|e| e.to_string())?;
    let bases: Vec<(String, String)> = gateway
        .state
        .fhir
        .tenants()
        .iter()
        .map(|t| (format!("{} ({})", t.name, t.slug), gateway.state.config.base_url(&t.slug)))
        .collect();
    let listener = tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    eprintln!("Renraku is listening on http://{listen}{}", if demo { " (demo mode)" } else { "" });
    for (name, base) in bases {
        eprintln!("  FHIR base for {name}: {base}");
    }
    if demo {
        eprintln!("  Demo access tokens (demo mode only; see README):");
        for (token, tenant, _, _, who) in renraku::demo::demo_tokens() {
            eprintln!("    {token:<26} at {tenant:<13} {who}");
        }
    }
    gateway.serve_until(listener, stop_signal(), grace).await.map_err(|e| e.to_string())
}

/// SIGTERM (what orchestrators send) or Ctrl-C.
async fn stop_signal() {
    #[cfg(unix)]
    {
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut terminate) => {
                    terminate.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
