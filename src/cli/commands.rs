//! The other commands: init, recompute, audience, sql, serve, demo; each
//! calls the library's verb and prints its result.

use super::*;

pub(super) async fn init_base(dir: &Path, args: InitArgs) -> anyhow::Result<ExitCode> {
    let InitArgs { time_zone } = args;
    let config = Config {
        time_zone,
        ..Config::default()
    };
    config.tz().map_err(anyhow::Error::msg)?;
    let base = init(dir, config)?;
    println!(
        "created base {} with {} default segments",
        base.dir().display(),
        crate::jobs::default_segments(&base.config).len()
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn recompute_cmd(dir: &Path, args: RecomputeArgs) -> anyhow::Result<ExitCode> {
    let RecomputeArgs {
        as_of,
        jobs,
        dry_run,
        full,
        report,
        format,
    } = args;
    let fresh = if full {
        Fresh::Full
    } else {
        Fresh::Incremental
    };
    let mut base = open(dir)?;
    base.jobs = jobs;
    if let Some(index) = report {
        let snap = base.snapshot()?;
        let r = crate::jobs::recompute::read_report(snap.dir(), &snap.manifest, index)?;
        if format == Format::Json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            println!(
                "run started {} as of {}, {} ms",
                r.started_at.to_rfc3339(),
                r.as_of.to_rfc3339(),
                r.duration_ms
            );
            print_run(&r, format)?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if dry_run {
        let snap = base.snapshot()?;
        print!(
            "{}",
            crate::jobs::recompute::dry_run(
                &base,
                &snap.manifest,
                as_of.unwrap_or_else(Utc::now),
                fresh
            )
            .await?
        );
        return Ok(ExitCode::SUCCESS);
    }
    let bar = progress_bar(&mut base);
    let report = nightly(&base, &describe("recompute"), now_or(as_of), fresh).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    print_run(&report, format)?;
    let failures = report.failures();
    if !failures.is_empty() {
        eprintln!("{} segment(s) failed:", failures.len());
        for f in failures {
            eprintln!("  {}: {}", f.id, f.error.clone().unwrap_or_default());
        }
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn audience_cmd(dir: &Path, args: AudienceArgs) -> anyhow::Result<ExitCode> {
    let AudienceArgs {
        include,
        exclude,
        channel,
        out,
        as_of,
    } = args;
    let base = open(dir)?;
    let (bm, m) = change(&base, &describe("audience"), async |w| {
        seg::audience(w, &include, &exclude, channel.into(), now_or(as_of)).await
    })
    .await?;
    match out {
        Some(path) => {
            let batch = seg::members_batch(base.dir(), &m, &bm, None, &[])?;
            crate::jobs::export::write_batch(&path, &batch)?;
            println!("{} contact(s) written to {}", bm.len(), path.display());
        }
        None => println!("{} contact(s)", bm.len()),
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn sql_cmd(dir: &Path, args: SqlArgs) -> anyhow::Result<ExitCode> {
    let SqlArgs {
        query,
        format,
        out,
        memory_limit,
    } = args;
    let mut base = open(dir)?;
    base.memory_limit = memory_limit;
    let rf = match (format, &out) {
        (Some(f), _) => f.rows(RowFormat::JsonLines),
        (None, Some(path)) => RowFormat::of_path(path)?,
        (None, None) => RowFormat::Table,
    };
    if rf == RowFormat::Parquet && out.is_none() {
        anyhow::bail!("Parquet is written to a file: add --out FILE.parquet");
    }
    let Some(query) = query else {
        if out.is_some() {
            anyhow::bail!("--out saves the rows of one query: give the query");
        }
        return shell::run(&base, rf).await.map(|()| ExitCode::SUCCESS);
    };
    let snap = base.snapshot()?;
    let (schema, batches) = crate::sql::query(&snap, &query).await?;
    match &out {
        Some(path) => {
            crate::jobs::export::save_batches(path, &schema, &batches, rf)?;
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            eprintln!("{rows} row(s) written to {}", path.display());
        }
        None => crate::jobs::export::print_batches(&mut std::io::stdout().lock(), &batches, rf)?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Where to serve: a port (on `listen`, or loopback), or an address, which
/// must be loopback unless `--listen` allows other machines.
fn endpoint(
    text: &str,
    listen: Option<std::net::IpAddr>,
    flag: &str,
) -> anyhow::Result<std::net::SocketAddr> {
    use std::net::{Ipv4Addr, SocketAddr};
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::new(
            listen.unwrap_or(Ipv4Addr::LOCALHOST.into()),
            port,
        ));
    }
    let addr: SocketAddr = text.parse().map_err(|_| {
        anyhow::anyhow!("--{flag} {text:?}: expected a port or an address such as 127.0.0.1:8080")
    })?;
    if !addr.ip().is_loopback() && listen.is_none() {
        anyhow::bail!(
            "--{flag} {addr}: not a loopback address; add --listen {} to accept connections from other machines",
            addr.ip()
        );
    }
    Ok(addr)
}

pub(super) async fn serve_cmd(dir: &Path, args: ServeArgs) -> anyhow::Result<ExitCode> {
    let ServeArgs {
        http,
        pg,
        listen,
        memory_limit,
        max_upload,
        request_timeout,
        statement_timeout,
        idle_timeout,
        tls_cert,
        tls_key,
    } = args;
    let idle_timeout = Some(idle_timeout).filter(|t| !t.is_zero());
    let tls = match (tls_cert, tls_key) {
        (Some(cert), Some(key)) => Some(crate::sql::tls::TlsFiles { cert, key }),
        _ => None,
    };
    let (http, pg) = match (http, pg) {
        (None, None) => (Some("8080".to_string()), Some("5433".to_string())),
        other => other,
    };
    let http = http.map(|t| endpoint(&t, listen, "http")).transpose()?;
    let pg = pg.map(|t| endpoint(&t, listen, "pg")).transpose()?;
    let mut base = open(dir)?;
    base.memory_limit = memory_limit;
    let (user, password) = base.config.serve.credentials();
    let stop = tokio_util::sync::CancellationToken::new();
    // Memory freed after a query's peak goes back to the system.
    tokio::spawn(async {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            every.tick().await;
            let _ = tokio::task::spawn_blocking(super::process::return_freed_memory).await;
        }
    });
    let http_server = {
        let base = base.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        async move {
            let Some(listen) = http else { return Ok(()) };
            let mut opts = crate::http::HttpOptions::new(listen, base.config.serve.accounts());
            opts.max_upload = max_upload;
            opts.request_timeout = std::time::Duration::from_secs(request_timeout);
            opts.tls = tls;
            opts.idle_timeout = idle_timeout;
            let scheme = if opts.tls.is_some() { "https" } else { "http" };
            crate::http::serve(
                base,
                opts,
                |addr| {
                    eprintln!(
                        "serving {} on {scheme}://{addr}/ (JSON API); Ctrl-C stops",
                        dir.display()
                    )
                },
                async move { stop.cancelled().await },
            )
            .await
        }
    };
    let pg_server = {
        let stop = stop.clone();
        async move {
            let Some(listen) = pg else { return Ok(()) };
            let with_tls = tls.is_some();
            let opts = crate::sql::serve::ServeOptions {
                listen,
                user: user.clone(),
                password,
                statement_timeout,
                tls,
                idle_timeout,
            };
            crate::sql::serve::serve(
                base,
                opts,
                |addr| {
                    eprintln!(
                        "serving {} on {addr} (PostgreSQL protocol{}, user {user}, read-only); Ctrl-C stops",
                        dir.display(),
                        if with_tls { ", TLS" } else { "" }
                    )
                },
                async move { stop.cancelled().await },
            )
            .await
        }
    };
    let signal = {
        let stop = stop.clone();
        async move {
            stop_signal().await;
            stop.cancel();
        }
    };
    // The first to fail stops the other.
    let failed = |stop: tokio_util::sync::CancellationToken| {
        move |r: crate::Result<()>| {
            if r.is_err() {
                stop.cancel();
            }
            r
        }
    };
    let (h, p, ()) = tokio::join!(
        futures::FutureExt::map(http_server, failed(stop.clone())),
        futures::FutureExt::map(pg_server, failed(stop.clone())),
        async {
            tokio::select! {
                () = signal => {}
                () = stop.cancelled() => {}
            }
        },
    );
    h?;
    p?;
    eprintln!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn demo(dir: &Path, contacts: u32) -> anyhow::Result<ExitCode> {
    let as_of = Utc::now();
    if !dir.join("segments.toml").exists() {
        println!(
            "generating a demo base in {} ({contacts} contacts)...",
            dir.display()
        );
        crate::synth::generate(
            dir,
            &crate::synth::GenOptions {
                contacts,
                events_per_contact: 30,
                seed: 42,
                as_of,
            },
        )?;
    }
    let mut base = open(dir)?;
    crate::synth::create_examples(&base, as_of).await?;
    let bar = progress_bar(&mut base);
    let report = nightly(&base, "segments demo", as_of, Fresh::Incremental).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "nightly recompute: {} segments in {} ms ({} contact conditions, {} behaviour conditions, shared scans)",
        report.segments.len(),
        report.duration_ms,
        report.contact_leaves,
        report.event_leaves
    );
    let snap = base.snapshot()?;
    let rows = snap
        .manifest
        .segments
        .iter()
        .map(|r| {
            row(&views::SegmentSummary::of(
                r,
                &base.config,
                Utc::now(),
                false,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    print_rows(
        Format::Table,
        &[
            "id",
            "name",
            "status",
            "contacts",
            "email_optins",
            "sms_optins",
            "duration_ms",
        ],
        &rows,
    )?;
    Ok(if report.failures().is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

/// Ctrl-C or SIGTERM.
pub(super) async fn stop_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async {
            match term.as_mut() {
                Some(t) => { t.recv().await; }
                None => std::future::pending::<()>().await,
            }
        } => {}
    }
}

pub(super) async fn import_cmd(dir: &Path, cmd: ImportCmd) -> anyhow::Result<ExitCode> {
    let base = open(dir)?;
    let (what, as_of) = match cmd {
        ImportCmd::Contacts {
            file,
            name,
            overwrite_empty,
            as_of,
        } => (
            ImportFile::Contacts {
                file,
                options: ImportOptions {
                    name,
                    overwrite_empty,
                },
            },
            as_of,
        ),
        ImportCmd::Events {
            file,
            name,
            skip_unknown,
            as_of,
        } => (
            ImportFile::Events {
                file,
                options: EventImportOptions { name, skip_unknown },
            },
            as_of,
        ),
    };
    let (report, refreshed) = import(&base, &describe("import"), &what, as_of).await?;
    print_import(&report, refreshed);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn check_cmd(dir: &Path) -> anyhow::Result<ExitCode> {
    let base = open(dir)?;
    let snap = base.snapshot()?;
    let problems = crate::base::check::check(&snap)?;
    if problems.is_empty() {
        println!(
            "ok: version {}, {} contacts, {} event files, {} segments",
            snap.manifest.version,
            snap.manifest.contact_count,
            snap.manifest.events.len(),
            snap.manifest.segments.len()
        );
    } else {
        for p in &problems {
            eprintln!("problem: {p}");
        }
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// Generate a base, then compute its segments as of the generation's
/// time, so that it is ready to query, serve or benchmark.
pub(super) async fn gen_cmd(dir: &Path, args: GenArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::synth::GenOptions {
        contacts: args.contacts,
        events_per_contact: args.events_per_contact,
        seed: args.seed,
        as_of: args.as_of.unwrap_or_else(Utc::now),
    };
    let t0 = std::time::Instant::now();
    let stats = crate::synth::generate(dir, &opts)?;
    println!(
        "generated {} contacts and {} events in {:.1}s",
        stats.contacts,
        stats.events,
        t0.elapsed().as_secs_f64()
    );
    let mut base = open(dir)?;
    let bar = progress_bar(&mut base);
    let report = nightly(&base, "segments gen", opts.as_of, Fresh::Incremental).await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    println!(
        "computed {} segments in {} ms: the base is up to date",
        report.segments.len(),
        report.duration_ms
    );
    Ok(ExitCode::SUCCESS)
}

pub(super) async fn bench_cmd(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let opts = crate::bench::BenchOptions::from(args);
    // The workloads own their runtime: leave this one first.
    let report = tokio::task::spawn_blocking(move || crate::bench::run(&opts)).await??;
    let rows: Vec<serde_json::Value> = report
        .workloads
        .iter()
        .map(|w| {
            json!({"workload": w.name, "median_ms": format!("{:.3}", w.median_ms), "min_ms": format!("{:.3}", w.min_ms),
                "max_ms": format!("{:.3}", w.max_ms), "peak_rss_mb": format!("{:.0}", w.peak_rss_mb),
                "throughput": w.throughput.to_string(), "note": w.note})
        })
        .collect();
    println!(
        "base {}: {} contacts, {} events",
        report.base, report.contacts, report.events
    );
    print_rows(
        Format::Table,
        &[
            "workload",
            "median_ms",
            "min_ms",
            "max_ms",
            "peak_rss_mb",
            "throughput",
            "note",
        ],
        &rows,
    )?;
    println!("report: {}/bench-report.json", report.base);
    Ok(ExitCode::SUCCESS)
}
