//! The HTTP API against the library in the same process, on the benchmark
//! base of `segments bench`: the five typical previews, in-process (the
//! verb run on a worker of the server's runtime, as its handlers run) and
//! as `POST /api/preview` over loopback, interleaved, with and without the
//! sample's profiles; then the segments list
//! (`GET /api/segments`, every segment). Prints p50 and p99 of each and
//! their ratio (see BENCHMARKS.md).
//!
//! ```sh
//! cargo bench --bench http -- --contacts 1000000 --segments 1000 --runs 30
//! ```

use std::time::Instant;

use segments::bench::{BenchOptions, bench_as_of, prepare, typical_previews};
use segments::criteria::Definition;
use serde_json::{Value, json};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// The q-quantile (0..=1) of some durations, nearest rank.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let rank = ((q * s.len() as f64).ceil() as usize).clamp(1, s.len());
    s[rank - 1]
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let opts = BenchOptions {
        dir: arg("--dir", "bench-data").into(),
        contacts: arg("--contacts", "100000").parse().expect("--contacts N"),
        events_per_contact: arg("--events-per-contact", "30")
            .parse()
            .expect("--events-per-contact N"),
        segments: arg("--segments", "1000").parse().expect("--segments N"),
        runs: arg("--runs", "30").parse().expect("--runs N"),
        workloads: Vec::new(),
    };
    let base = prepare(&opts).expect("benchmark base");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let as_of = bench_as_of();
    // Segments with statistics, as a list shows them after a nightly run.
    let uncomputed = base
        .snapshot()
        .unwrap()
        .manifest
        .segments
        .iter()
        .any(|s| s.stats.is_none());
    if uncomputed {
        let t = Instant::now();
        rt.block_on(segments::jobs::recompute::nightly(
            &base,
            "bench http: nightly",
            as_of,
            segments::jobs::recompute::Fresh::Full,
        ))
        .unwrap();
        eprintln!("nightly run first: {:.1}s", ms(t) / 1000.0);
    }

    let password = "bench-password".to_string();
    let accounts = vec![segments::base::config::Account {
        user: "bench".into(),
        password: password.clone(),
        role: Default::default(),
    }];
    let (tx, rx) = std::sync::mpsc::channel();
    let served = base.clone();
    rt.spawn(async move {
        let opts = segments::http::HttpOptions::new("127.0.0.1:0".parse().unwrap(), accounts);
        segments::http::serve(
            served,
            opts,
            move |a| tx.send(a).unwrap(),
            std::future::pending(),
        )
        .await
        .unwrap();
    });
    let addr = rx.recv().unwrap();
    let url = format!("http://{addr}/api");
    // The client runs on the calling thread, as an async back end calls
    // the API: no hop to a client thread per request.
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = reqwest::Client::new();
    let fetch = |request: reqwest::RequestBuilder| -> Value {
        client_rt.block_on(async { request.send().await.unwrap().json().await.unwrap() })
    };
    let login = fetch(
        client
            .post(format!("{url}/login"))
            .json(&json!({"user": "bench", "password": password})),
    );
    let token = login["token"].as_str().unwrap().to_string();

    let contacts = base.snapshot().unwrap().manifest.contact_count;
    println!(
        "base: {contacts} contacts, {} segments; {} runs each after 2 warm-ups\n",
        base.snapshot().unwrap().manifest.segments.len(),
        opts.runs
    );
    // Each preview two ways, each in process and over HTTP, interleaved:
    // the count and the sample's ids (`preview`, `?profiles=false`), and
    // with the sample's profiles, as the criteria builder asks for it
    // (`preview_with_profiles`, the default of `POST /api/preview`).
    println!(
        "| preview | with profiles | in-process p50 | HTTP p50 | ratio | in-process p99 | HTTP p99 | contacts |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|");
    let mut results = Vec::new();
    for p in typical_previews().unwrap() {
        let def = Definition::parse(&p).unwrap();
        // The verb runs on a worker of the runtime, as the server's
        // handlers do: the two differ by the HTTP layer only.
        let local = |profiles: bool| {
            let snap = base.snapshot().unwrap();
            let def = def.clone();
            let task = rt.spawn(async move {
                if profiles {
                    segments::jobs::segments::preview_with_profiles(&snap, &def, as_of).await
                } else {
                    segments::jobs::segments::preview(&snap, &def, as_of).await
                }
            });
            rt.block_on(task).unwrap().unwrap().count
        };
        let remote = |profiles: bool| -> u64 {
            let v = fetch(
                client
                    .post(format!("{url}/preview"))
                    .query(&[
                        ("as_of", as_of.to_rfc3339()),
                        ("profiles", profiles.to_string()),
                    ])
                    .bearer_auth(&token)
                    .json(&p),
            );
            v["count"].as_u64().unwrap_or_else(|| panic!("{v}"))
        };
        for profiles in [false, true] {
            for _ in 0..2 {
                assert_eq!(local(profiles), remote(profiles));
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            for _ in 0..opts.runs {
                let t = Instant::now();
                let n = local(profiles);
                a.push(ms(t));
                let t = Instant::now();
                assert_eq!(remote(profiles), n);
                b.push(ms(t));
            }
            let (a50, b50) = (quantile(&a, 0.5), quantile(&b, 0.5));
            println!(
                "| {} | {} | {a50:.1} ms | {b50:.1} ms | {:.3} | {:.1} ms | {:.1} ms | {} |",
                def.id,
                if profiles { "yes" } else { "no" },
                b50 / a50,
                quantile(&a, 0.99),
                quantile(&b, 0.99),
                local(profiles)
            );
            results.push(
                json!({"preview": def.id, "profiles": profiles, "local_ms": a, "http_ms": b}),
            );
        }
    }

    let list = || {
        let v = fetch(
            client
                .get(format!("{url}/segments?limit=10000"))
                .bearer_auth(&token),
        );
        v["total"].as_u64().unwrap()
    };
    let local_list = || {
        let snap = base.snapshot().unwrap();
        segments::jobs::views::list(&snap, Default::default(), None).len() as u64
    };
    for _ in 0..2 {
        assert_eq!(list(), local_list());
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs.max(50) {
        let t = Instant::now();
        let n = local_list();
        a.push(ms(t));
        let t = Instant::now();
        assert_eq!(list(), n);
        b.push(ms(t));
    }
    println!(
        "\nsegments list ({} segments): in-process p50 {:.2} ms, p99 {:.2} ms; HTTP p50 {:.2} ms, p99 {:.2} ms",
        local_list(),
        quantile(&a, 0.5),
        quantile(&a, 0.99),
        quantile(&b, 0.5),
        quantile(&b, 0.99)
    );
    results.push(json!({"list": local_list(), "local_ms": a, "http_ms": b}));

    // The console's segments page as a browser loads it: the page, its
    // script and stylesheet, then the list (with the session cookie).
    let cookie = format!("segments_session={token}");
    let origin = url.trim_end_matches("/api").to_string();
    let get = |path: &str| {
        let request = client
            .get(format!("{origin}{path}"))
            .header("cookie", &cookie);
        client_rt.block_on(async {
            let r = request.send().await.unwrap();
            assert!(r.status().is_success(), "{path}: {}", r.status());
            r.bytes().await.unwrap().len()
        })
    };
    let page = || {
        get("/")
            + get("/assets/console.js")
            + get("/assets/console.css")
            + get("/api/segments?sort=name&limit=10000")
    };
    let bytes = page();
    let mut c = Vec::new();
    for _ in 0..opts.runs.max(50) {
        let t = Instant::now();
        page();
        c.push(ms(t));
    }
    println!(
        "segments page (HTML, script, stylesheet, list; {bytes} bytes): p50 {:.2} ms, p99 {:.2} ms",
        quantile(&c, 0.5),
        quantile(&c, 0.99)
    );
    results.push(json!({"segments_page_ms": c}));
    let out = opts.dir.join("bench-http.json");
    std::fs::write(&out, serde_json::to_vec_pretty(&results).unwrap()).unwrap();
    println!("runs written to {}", out.display());
}
