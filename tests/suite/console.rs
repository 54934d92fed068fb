//! The web console in real headless Chromium, driven over WebDriver
//! (chromedriver): a marketer logs in, reads the segments page, builds a
//! segment with a live count, saves it, sees and exports its profiles,
//! pauses, activates, duplicates and deletes. Screenshots of each page are
//! written under `target/console/`; `UPDATE_GOLDEN=1` also copies those the
//! README shows into `docs/`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::cli::{json_of, segments, stdout_of};
use super::http::Api;

const PASSWORD: &str = "s3cret-for-tests";

/// chromedriver on a free port, killed on drop.
struct Driver {
    child: std::process::Child,
    port: u16,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool(name: &str, debian: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is missing: install Debian's {debian} (.ci/run does)");
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(tool("chromedriver", "chromium-driver"))
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let t0 = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "chromedriver did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            port,
            _profile: tempfile::tempdir().unwrap(),
        }
    }

    async fn browser(&self, width: u32, height: u32) -> Client {
        let args = json!([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--lang=en-GB",
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", self._profile.path().display()),
        ]);
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({"binary": tool("chromium", "chromium"), "args": args}),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .expect("a Chromium session")
    }
}

fn shots() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/console");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    std::fs::write(shots().join(format!("{name}.png")), &png).unwrap();
    if std::env::var_os("UPDATE_GOLDEN").is_some() && matches!(name, "segments" | "builder") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs");
        std::fs::create_dir_all(&docs).unwrap();
        std::fs::write(docs.join(format!("console-{name}.png")), &png).unwrap();
    }
}

/// Wait until `check` returns Some (polling the page), or fail saying `what`.
async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let t0 = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "waited too long for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(c: &Client, css: &str) -> Option<String> {
    c.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .unwrap_or_else(|e| panic!("click {css}: {e}"));
}

/// The value of a JavaScript expression in the page.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, vec![]).await.unwrap()
}

/// A count as the console prints it (en-GB grouping).
fn fmt_int(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn number(text: &str) -> Option<u64> {
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Choose an option of the select inside `scope` matched by `css`, as a
/// person does (the change event fires).
async fn choose(c: &Client, css: &str, value: &str) {
    let sel = c
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"));
    sel.select_by_value(value)
        .await
        .unwrap_or_else(|e| panic!("{css} = {value}: {e}"));
}

#[test]
fn a_marketer_works_in_the_console() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path().join("demo");
    segments(dir.path())
        .args(["demo", "--dir"])
        .arg(&b)
        .args(["--contacts", "3000"])
        .assert()
        .success();
    let api = Api::start(&b);
    let driver = Driver::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let c = driver.browser(1280, 800).await;
        let r = scenario(&c, &api, &b).await;
        // The phone-width segments page.
        c.set_window_size(390, 844).await.unwrap();
        c.goto(&format!("{}/", api.url)).await.unwrap();
        until("the list at phone width", || async {
            text(&c, "#summary").await.filter(|t| !t.is_empty())
        })
        .await;
        shot(&c, "segments-phone").await;
        let overflow = js(
            &c,
            "return document.documentElement.scrollWidth > window.innerWidth + 1",
        )
        .await;
        assert_eq!(
            overflow,
            json!(false),
            "the page fits a phone's width (tables scroll inside)"
        );
        c.close().await.unwrap();
        r
    });
}

async fn scenario(c: &Client, api: &Api, b: &Path) {
    // Logging in: the console sends to the login page, then back.
    c.goto(&format!("{}/", api.url)).await.unwrap();
    until("the login page", || async {
        c.current_url().await.ok().filter(|u| u.path() == "/login")
    })
    .await;
    shot(c, "login").await;
    let user = c.find(Locator::Css("#login-user")).await.unwrap();
    user.clear().await.unwrap();
    user.send_keys("segments").await.unwrap();
    c.find(Locator::Css("#login-password"))
        .await
        .unwrap()
        .send_keys("wrong")
        .await
        .unwrap();
    click(c, "#login button[type=submit]").await;
    let err = until("a refused login", || async {
        text(c, "#login-error").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(err.contains("wrong user or password"), "{err}");
    let password = c.find(Locator::Css("#login-password")).await.unwrap();
    password.clear().await.unwrap();
    password.send_keys(PASSWORD).await.unwrap();
    click(c, "#login button[type=submit]").await;

    // The segments page: the demo's segments with the figures of `segment list`.
    until("the segments table", || async {
        text(c, "#summary").await.filter(|t| !t.is_empty())
    })
    .await;
    let cli = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let rows = js(c, "return Array.from(document.querySelectorAll('#segments tbody tr')).map(tr => ({id: tr.dataset.id, \
        name: tr.cells[1].innerText, status: tr.querySelector('.badge').dataset.status, \
        contacts: tr.querySelector('[data-col=contacts]').innerText, email: tr.querySelector('[data-col=email_optins]').innerText, \
        sms: tr.querySelector('[data-col=sms_optins]').innerText}))").await;
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), cli.as_array().unwrap().len());
    for want in cli.as_array().unwrap() {
        let got = rows
            .iter()
            .find(|r| r["id"] == want["id"])
            .unwrap_or_else(|| panic!("{} is listed", want["id"]));
        assert_eq!(got["name"], want["name"]);
        assert_eq!(got["status"], want["status"]);
        assert_eq!(
            number(got["contacts"].as_str().unwrap()),
            want["contacts"].as_u64(),
            "{want}"
        );
        assert_eq!(
            number(got["email"].as_str().unwrap()),
            want["email_optins"].as_u64(),
            "{want}"
        );
        assert_eq!(
            number(got["sms"].as_str().unwrap()),
            want["sms_optins"].as_u64(),
            "{want}"
        );
    }
    shot(c, "segments").await;

    // The builder: city is Paris AND opened an e-mail in the last 30 days.
    click(c, "a.button.primary[href='/new']").await;
    until("the builder", || async {
        c.find(Locator::Css("#criteria .group")).await.ok()
    })
    .await;
    c.find(Locator::Css("#segment-name"))
        .await
        .unwrap()
        .send_keys("Parisiens ouvreurs")
        .await
        .unwrap();
    click(c, "#criteria .adders button[data-add=field]").await;
    choose(
        c,
        "#criteria .cond[data-kind=field] select[data-role=field]",
        "city",
    )
    .await;
    choose(
        c,
        "#criteria .cond[data-kind=field] select[data-role=op]",
        "eq",
    )
    .await;
    c.find(Locator::Css(
        "#criteria .cond[data-kind=field] input[data-role=value]",
    ))
    .await
    .unwrap()
    .send_keys("Paris")
    .await
    .unwrap();
    click(c, "#criteria .group > .adders button[data-add=behavior]").await;
    choose(
        c,
        "#criteria .cond[data-kind=behavior] select[data-role=event]",
        "email_open",
    )
    .await;
    let def = json!({"name": "x", "criteria": {"all": [
        {"field": "city", "op": "eq", "value": "Paris"},
        {"behavior": {"event": "email_open", "within": "30d"}},
    ]}});
    let file = b.join("parisiens.json");
    std::fs::write(&file, def.to_string()).unwrap();
    let cli_preview = stdout_of(segments(b).args(["segment", "preview"]).arg(&file));
    let want = number(cli_preview.split(" contact").next().unwrap()).unwrap();
    until(
        &format!("the live count to show {want}, as `segment preview` does"),
        || async {
            let t = text(c, "#live-count").await?;
            let note = text(c, "#live-note").await?;
            (note.starts_with("contacts") && number(&t) == Some(want)).then_some(())
        },
    )
    .await;
    assert!(want > 0, "the demo has Parisians who opened an e-mail");
    let sentence = text(c, "#builder-words").await.unwrap();
    assert_eq!(
        sentence,
        "city is Paris AND opened an e-mail in the last 30 days"
    );
    let sample = js(c, "return document.querySelectorAll('#sample tr').length").await;
    assert_eq!(sample, json!(want.min(10)));
    shot(c, "builder").await;
    click(c, "#save").await;

    // Saved: its page, up to date, with its definition in words.
    until("the segment page", || async {
        c.current_url()
            .await
            .ok()
            .filter(|u| u.path() == "/segments/parisiens-ouvreurs")
    })
    .await;
    let status = until("up to date", || async {
        let s = c
            .find(Locator::Css("h1 .badge"))
            .await
            .ok()?
            .attr("data-status")
            .await
            .ok()??;
        (s != "computing").then_some(s)
    })
    .await;
    assert_eq!(status, "up_to_date");
    assert_eq!(
        number(&text(c, "#stat-contacts").await.unwrap()),
        Some(want)
    );
    assert_eq!(text(c, "#definition-words").await.unwrap(), sentence);
    shot(c, "segment").await;

    // Edit opens the builder on the saved definition, counted again.
    click(c, "a.button[href$='/edit']").await;
    until("the edit builder", || async {
        text(c, "#builder-words").await.filter(|t| *t == sentence)
    })
    .await;
    until("the count of the saved definition", || async {
        let t = text(c, "#live-count").await?;
        (number(&t) == Some(want)).then_some(())
    })
    .await;
    let name = c
        .find(Locator::Css("#segment-name"))
        .await
        .unwrap()
        .prop("value")
        .await
        .unwrap();
    assert_eq!(name.as_deref(), Some("Parisiens ouvreurs"));
    c.back().await.unwrap();
    until("the segment page again", || async {
        text(c, "#definition-words").await
    })
    .await;

    // Its profiles, and the export equal to `segment export`.
    click(c, "a.button.primary[href$='/profiles']").await;
    let count = until("the profiles", || async {
        text(c, "#profiles-count").await.filter(|t| !t.is_empty())
    })
    .await;
    assert_eq!(number(&count), Some(want));
    let shown = js(
        c,
        "return document.querySelectorAll('#profiles tbody tr[data-contact]').length",
    )
    .await;
    assert_eq!(shown, json!(want.min(50)));
    click(c, "#profiles button.sort[data-sort=entered_at]").await;
    until("sorted by entry date", || async {
        c.find(Locator::Css(
            "#profiles button.sort[data-sort=entered_at][aria-sort=ascending]",
        ))
        .await
        .ok()
    })
    .await;
    shot(c, "profiles").await;
    let exported = c
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             fetch(document.querySelector('#export-csv').href).then(r => r.text()).then(done)",
            vec![],
        )
        .await
        .unwrap();
    let out = b.join("cli-export.csv");
    segments(b)
        .args(["segment", "export", "parisiens-ouvreurs", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(
        exported.as_str().unwrap(),
        std::fs::read_to_string(&out).unwrap()
    );

    // Pause, activate, duplicate, delete from the segments page.
    c.goto(&format!("{}/", api.url)).await.unwrap();
    let row: &'static str = "#segments tr[data-id=parisiens-ouvreurs]";
    until("the new row", || async {
        c.find(Locator::Css(row)).await.ok()
    })
    .await;
    let act = |row: &'static str, action: &'static str| async move {
        click(c, &format!("{row} details.menu summary")).await;
        click(
            c,
            &format!("{row} details.menu[open] button[data-action={action}]"),
        )
        .await;
    };
    act(row, "pause").await;
    until("paused", || async {
        c.find(Locator::Css(&format!("{row} .badge[data-status=paused]")))
            .await
            .ok()
    })
    .await;
    act(row, "resume").await;
    until("active again", || async {
        c.find(Locator::Css(&format!(
            "{row} .badge[data-status=up_to_date]"
        )))
        .await
        .ok()
    })
    .await;
    act(row, "duplicate").await;
    let input = until("the duplicate dialog", || async {
        c.find(Locator::Css("#dialog[open] #dialog-input"))
            .await
            .ok()
    })
    .await;
    input.clear().await.unwrap();
    input.send_keys("Parisiens bis").await.unwrap();
    click(c, "#dialog-ok").await;
    let copy: &'static str = "#segments tr[data-id=parisiens-bis]";
    until("the copy", || async {
        c.find(Locator::Css(copy)).await.ok()
    })
    .await;
    assert_eq!(
        number(
            &text(c, &format!("{copy} td[data-col=contacts]"))
                .await
                .unwrap()
        ),
        Some(want)
    );
    act(copy, "delete").await;
    until("the delete dialog", || async {
        c.find(Locator::Css("#dialog[open]")).await.ok()
    })
    .await;
    click(c, "#dialog-ok").await;
    until("the copy gone", || async {
        c.find(Locator::Css(copy)).await.is_err().then_some(())
    })
    .await;
    // A segment other segments refer to is not deleted, and the reason shows.
    act("#segments tr[data-id=active_contacts]", "delete").await;
    until("the delete dialog", || async {
        c.find(Locator::Css("#dialog[open]")).await.ok()
    })
    .await;
    click(c, "#dialog-ok").await;
    let refused = until("the refusal", || async {
        text(c, "#flash .notice.error").await
    })
    .await;
    assert!(refused.contains("is used by"), "{refused}");
    assert!(
        c.find(Locator::Css("#segments tr[data-id=active_contacts]"))
            .await
            .is_ok()
    );

    // The overlap of three segments picked on the list: the numbers of
    // `segment overlap`, and a draft of "A and B" in the builder.
    let picked = ["email_subscribers", "sms_subscribers", "active_contacts"];
    for id in picked {
        click(c, &format!("#segments tr[data-id={id}] input.pick")).await;
    }
    click(c, "#overlap-selected").await;
    until("the overlap matrix", || async {
        c.find(Locator::Css("#overlap td.cell")).await.ok()
    })
    .await;
    let cli = json_of(
        segments(b)
            .args(["segment", "overlap"])
            .args(picked)
            .args(["--format", "json"]),
    );
    for (i, a) in picked.iter().enumerate() {
        for (j, o) in picked.iter().enumerate() {
            let cell = text(c, &format!("#overlap td[data-row={a}][data-col={o}] b"))
                .await
                .unwrap();
            assert_eq!(number(&cell), cli["matrix"][i][j].as_u64(), "{a} ∩ {o}");
        }
    }
    let totals = text(c, "#overlap-totals").await.unwrap();
    assert!(
        totals.contains(&format!(
            "In at least one: {}",
            fmt_int(cli["union"].as_u64().unwrap())
        )),
        "{totals}"
    );
    shot(c, "overlap").await;
    choose(c, "#overlap-channel", "email").await;
    until("the matrix among e-mail reachable contacts", || async {
        text(c, "#overlap-totals")
            .await
            .filter(|t| t.contains("reachable by e-mail"))
    })
    .await;
    click(
        c,
        "#overlap td[data-row=email_subscribers][data-col=sms_subscribers] .drafts a",
    )
    .await;
    let words = until("the draft in the builder", || async {
        text(c, "#builder-words").await.filter(|t| !t.is_empty())
    })
    .await;
    assert_eq!(
        words,
        "in segment email_subscribers AND in segment sms_subscribers"
    );
    let both = cli["matrix"][0][1].as_u64().unwrap();
    until("the draft's live count", || async {
        (number(&text(c, "#live-count").await?) == Some(both)).then_some(())
    })
    .await;
    c.goto(&format!("{}/", api.url)).await.unwrap();
    until("the segments table", || async {
        c.find(Locator::Css("#update-all")).await.ok()
    })
    .await;

    // Update all now: the nightly job with its progress, then every
    // segment up to date.
    click(c, "#update-all").await;
    let done = until("the end of the run", || async {
        text(c, "#flash .notice")
            .await
            .filter(|t| t.contains("updated") || t.contains("failures"))
    })
    .await;
    assert!(done.starts_with("Every segment updated ("), "{done}");
    until("the button back", || async {
        let b = c.find(Locator::Css("#update-all")).await.ok()?;
        (b.attr("disabled").await.ok()?.is_none()).then_some(())
    })
    .await;
    let statuses = js(c, "return Array.from(document.querySelectorAll('#segments .badge')).map(b => b.dataset.status)").await;
    assert!(
        statuses
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s == "up_to_date"),
        "{statuses}"
    );

    // An invalid condition shows its error beside it.
    c.goto(&format!("{}/new", api.url)).await.unwrap();
    until("the builder", || async {
        c.find(Locator::Css("#criteria .group")).await.ok()
    })
    .await;
    click(c, "#json-view summary").await;
    let area = c.find(Locator::Css("#definition-json")).await.unwrap();
    area.clear().await.unwrap();
    area.send_keys(r#"{"name": "Broken", "criteria": {"all": [{"field": "email", "op": "is_not_empty"}, {"field": "email_optin", "op": "gt", "value": 3}]}}"#)
        .await
        .unwrap();
    click(c, "#apply-json").await;
    let beside = until("the error beside the condition", || async {
        text(c, "[data-error-for='criteria.all[1]']")
            .await
            .filter(|t| !t.is_empty())
    })
    .await;
    assert!(beside.contains("does not apply"), "{beside}");
    let first = text(c, "[data-error-for='criteria.all[0]']")
        .await
        .unwrap_or_default();
    assert!(
        first.is_empty(),
        "the valid condition has no error: {first}"
    );
    assert_eq!(text(c, "#live-count").await.unwrap(), "—");
    shot(c, "builder-error").await;

    // The audience page: include, exclude, channel, count.
    c.goto(&format!("{}/audience", api.url)).await.unwrap();
    until("the audience page", || async {
        c.find(Locator::Css("#include-list input[value=email_contacts]"))
            .await
            .ok()
    })
    .await;
    click(c, "#include-list input[value=email_contacts]").await;
    click(c, "#exclude-list input[value=sms_contacts]").await;
    click(c, "#audience-go").await;
    let count = until("the audience count", || async {
        text(c, "#audience-count b").await
    })
    .await;
    let cli = stdout_of(segments(b).args([
        "audience",
        "--include",
        "email_contacts",
        "--exclude",
        "sms_contacts",
        "--channel",
        "email",
    ]));
    assert_eq!(number(&count), number(cli.split(' ').next().unwrap()));
    shot(c, "audience").await;
}

/// The console's pages need a session; assets are served by the binary with
/// a policy that allows nothing from elsewhere.
#[test]
fn console_pages_need_a_session_and_load_nothing_from_elsewhere() {
    let dir = super::cli::small_base();
    let api = Api::start(dir.path());
    let plain = reqwest::blocking::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for page in [
        "/",
        "/new",
        "/audience",
        "/segments/all_contacts",
        "/segments/all_contacts/profiles",
    ] {
        let resp = plain.get(format!("{}{page}", api.url)).send().unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::SEE_OTHER, "{page}");
        let to = resp.headers()["location"].to_str().unwrap();
        assert_eq!(to, format!("/login?next={page}"));
    }
    let login = plain.get(format!("{}/login", api.url)).send().unwrap();
    assert_eq!(login.status(), reqwest::StatusCode::OK);
    let csp = login.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let html = login.text().unwrap();
    let outside: Vec<&str> = html
        .split(['"', '\''])
        .filter(|s| s.starts_with("http") || s.starts_with("//"))
        .collect();
    assert!(
        outside.is_empty(),
        "the page loads {outside:?} from elsewhere"
    );
    for asset in [
        "/assets/console.js",
        "/assets/console.css",
        "/assets/icon.svg",
    ] {
        let resp = plain.get(format!("{}{asset}", api.url)).send().unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::OK, "{asset}");
        let body = resp.text().unwrap();
        assert!(
            !body.contains("https://") || asset.ends_with(".svg"),
            "{asset} refers to another site"
        );
    }
    // With the session cookie the page is served; its writes need the CSRF token.
    let resp = plain
        .post(format!("{}/api/login", api.url))
        .json(&json!({"user": "segments", "password": PASSWORD}))
        .send()
        .unwrap();
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = plain
        .get(format!("{}/", api.url))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(page.status(), reqwest::StatusCode::OK);
    assert!(page.text().unwrap().contains("/assets/console.js"));
    let refused = plain
        .post(format!("{}/api/segments/all_contacts/refresh", api.url))
        .header("cookie", &cookie)
        .send()
        .unwrap();
    assert_eq!(refused.status(), reqwest::StatusCode::FORBIDDEN);
    let me: Value = plain
        .get(format!("{}/api/session", api.url))
        .header("cookie", &cookie)
        .send()
        .unwrap()
        .json()
        .unwrap();
    let done = plain
        .post(format!("{}/api/segments/all_contacts/refresh", api.url))
        .header("cookie", &cookie)
        .header("x-csrf-token", me["csrf_token"].as_str().unwrap())
        .send()
        .unwrap();
    assert_eq!(done.status(), reqwest::StatusCode::OK);
}
