//! The HTTP API over real sockets on loopback: a `segments serve --http`
//! process, called as a CRM's back end calls it, compared with the command
//! line on the same base.

use std::path::Path;
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

use super::cli::{AS_OF, json_of, segments, small_base, stdout_of, testdata};

const PASSWORD: &str = "s3cret-for-tests";
const READER_PASSWORD: &str = "reader-pass";

/// A running `segments serve --http` on a base, killed on drop.
pub struct Api {
    child: std::process::Child,
    pub url: String,
    pub client: Client,
}

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Add a read-only account to the base's configuration.
fn add_reader(base: &Path) {
    let path = base.join("segments.toml");
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str(&format!(
        "\n[[serve.users]]\nuser = \"reports\"\npassword = \"{READER_PASSWORD}\"\nrole = \"read\"\n"
    ));
    std::fs::write(&path, text).unwrap();
}

impl Api {
    pub fn start(base: &Path) -> Api {
        Api::start_with(base, &[])
    }

    pub fn start_with(base: &Path, args: &[&str]) -> Api {
        let mut all = vec!["--http", "127.0.0.1:0"];
        all.extend(args);
        let (child, port) = super::common::serve(base, PASSWORD, &all);
        Api {
            child,
            url: format!("http://127.0.0.1:{port}"),
            client: Client::builder()
                .timeout(Duration::from_secs(300))
                .build()
                .unwrap(),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.url))
            .basic_auth("segments", Some(PASSWORD))
    }

    pub fn get(&self, path: &str) -> Response {
        self.req(reqwest::Method::GET, path).send().unwrap()
    }

    pub fn post(&self, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::POST, path)
            .json(body)
            .send()
            .unwrap()
    }

    pub fn put(&self, path: &str, body: &Value) -> Response {
        self.req(reqwest::Method::PUT, path)
            .json(body)
            .send()
            .unwrap()
    }

    pub fn delete(&self, path: &str) -> Response {
        self.req(reqwest::Method::DELETE, path).send().unwrap()
    }

    /// The JSON of an answer that must have this status.
    pub fn expect(resp: Response, status: StatusCode) -> Value {
        let got = resp.status();
        let text = resp.text().unwrap();
        assert_eq!(got, status, "answer: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
    }

    pub fn ok(resp: Response) -> Value {
        Api::expect(resp, StatusCode::OK)
    }
}

/// An error answer: its status and the code of the one error shape.
fn error(resp: Response, status: StatusCode, code: &str) -> Value {
    let body = Api::expect(resp, status);
    let err = &body["error"];
    assert_eq!(err["code"], code, "{body}");
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body.as_object().unwrap().len(), 1, "only `error`: {body}");
    err.clone()
}

/// The rows `sql --format json` prints, one JSON object per line.
fn sql_rows(base: &Path, query: &str) -> Value {
    let out = stdout_of(segments(base).args(["sql", "--format", "json", query]));
    Value::Array(
        out.lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect(),
    )
}

fn definition(file: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(testdata(file)).unwrap()).unwrap()
}

fn version(base: &Path) -> u64 {
    let snap = segments::base::Base::open(base)
        .unwrap()
        .snapshot()
        .unwrap();
    snap.manifest.version
}

#[test]
fn logging_in_tokens_cookies_csrf_and_read_only_accounts() {
    let dir = small_base();
    add_reader(dir.path());
    let api = Api::start(dir.path());
    let url = |p: &str| format!("{}{p}", api.url);
    let c = &api.client;

    // No credentials, wrong ones: 401 in the error shape.
    error(
        c.get(url("/api/segments")).send().unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    error(
        c.get(url("/api/segments"))
            .basic_auth("segments", Some("wrong"))
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    error(
        c.get(url("/api/segments"))
            .bearer_auth("not-a-token")
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    error(
        c.post(url("/api/login"))
            .json(&json!({"user": "segments", "password": "wrong"}))
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
    // The OpenAPI document holds no data: no login needed.
    assert_eq!(
        c.get(url("/api/openapi.json")).send().unwrap().status(),
        StatusCode::OK
    );

    // A bearer token from login.
    let resp = c
        .post(url("/api/login"))
        .json(&json!({"user": "segments", "password": PASSWORD}))
        .send()
        .unwrap();
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let login = Api::ok(resp);
    let token = login["token"].as_str().unwrap().to_string();
    let csrf = login["csrf_token"].as_str().unwrap().to_string();
    assert_eq!(login["role"], "write");
    let list = Api::ok(
        c.get(url("/api/segments"))
            .bearer_auth(&token)
            .send()
            .unwrap(),
    );
    assert_eq!(list["total"], 11);

    // The console's cookie: reads need nothing more, writes need the CSRF token.
    let session = cookie.split(';').next().unwrap().to_string();
    let with_cookie = |rb: RequestBuilder| rb.header("cookie", &session);
    Api::ok(
        with_cookie(c.get(url("/api/segments/all_contacts")))
            .send()
            .unwrap(),
    );
    let me = Api::ok(with_cookie(c.get(url("/api/session"))).send().unwrap());
    assert_eq!(me["csrf_token"], csrf.as_str());
    let pause = || with_cookie(c.post(url("/api/segments/sms_contacts/pause")));
    error(pause().send().unwrap(), StatusCode::FORBIDDEN, "csrf");
    error(
        pause().header("x-csrf-token", "forged").send().unwrap(),
        StatusCode::FORBIDDEN,
        "csrf",
    );
    let preview = json!({"criteria": {"field": "email", "op": "is_not_empty"}});
    error(
        with_cookie(c.post(url("/api/preview")))
            .json(&preview)
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "csrf",
    );
    let paused = Api::ok(pause().header("x-csrf-token", &csrf).send().unwrap());
    assert_eq!(paused["status"], "paused");

    // A read account reads, previews and queries, and changes nothing.
    let reader = |rb: RequestBuilder| rb.basic_auth("reports", Some(READER_PASSWORD));
    Api::ok(reader(c.get(url("/api/segments"))).send().unwrap());
    Api::ok(
        reader(c.post(url("/api/preview")))
            .json(&preview)
            .send()
            .unwrap(),
    );
    Api::ok(
        reader(c.post(url("/api/sql")))
            .json(&json!({"query": "SELECT 1 AS one"}))
            .send()
            .unwrap(),
    );
    let before = version(dir.path());
    for (method, path) in [
        ("POST", "/api/segments/sms_contacts/resume"),
        ("POST", "/api/segments/sms_contacts/pause"),
        ("DELETE", "/api/segments/sms_contacts"),
        ("POST", "/api/recompute"),
        ("POST", "/api/audience"),
        ("POST", "/api/imports/contacts"),
    ] {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = reader(c.request(m, url(path)))
            .json(&json!({}))
            .send()
            .unwrap();
        error(resp, StatusCode::FORBIDDEN, "read_only_account");
    }
    let rlogin = Api::ok(
        c.post(url("/api/login"))
            .json(&json!({"user": "reports", "password": READER_PASSWORD}))
            .send()
            .unwrap(),
    );
    assert_eq!(rlogin["role"], "read");
    let rtoken = rlogin["token"].as_str().unwrap();
    error(
        c.post(url("/api/segments/sms_contacts/refresh"))
            .bearer_auth(rtoken)
            .send()
            .unwrap(),
        StatusCode::FORBIDDEN,
        "read_only_account",
    );
    assert_eq!(
        version(dir.path()),
        before,
        "nothing written by refused requests"
    );

    // Logout ends the token.
    let resp = c
        .post(url("/api/logout"))
        .bearer_auth(&token)
        .send()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    error(
        c.get(url("/api/segments"))
            .bearer_auth(&token)
            .send()
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );
}

#[test]
fn segment_routes_answer_like_the_command_line() {
    let dir = small_base();
    let b = dir.path();
    let api = Api::start(b);
    let def = definition("segments/02-ouvreurs-recents.json");

    // Preview equals `segment preview`.
    let preview = Api::ok(api.post(&format!("/api/preview?as_of={AS_OF}"), &def));
    let mut file = tempfile::NamedTempFile::new().unwrap();
    std::io::Write::write_all(&mut file, def.to_string().as_bytes()).unwrap();
    let cli = stdout_of(
        segments(b)
            .args(["segment", "preview"])
            .arg(file.path())
            .args(["--as-of", AS_OF]),
    );
    assert!(
        cli.starts_with(&format!("{} contact(s)", preview["count"])),
        "{cli} vs {preview}"
    );
    let sample: Vec<String> = preview["sample"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    assert!(
        cli.contains(&format!("sample: {}", sample.join(", "))),
        "{cli} vs {preview}"
    );
    // With the sample's profiles by default; without them on request.
    let profiles = preview["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), sample.len());
    assert_eq!(profiles[0]["contact_id"], preview["sample"][0]);
    let bare = Api::ok(api.post(&format!("/api/preview?as_of={AS_OF}&profiles=false"), &def));
    assert_eq!(
        (&bare["count"], &bare["sample"], &bare["profiles"]),
        (
            &preview["count"],
            &preview["sample"],
            &serde_json::json!([])
        )
    );

    // Create, then the list, show, members and export equal the CLI's.
    let created = Api::expect(
        api.post(&format!("/api/segments?as_of={AS_OF}"), &def),
        StatusCode::CREATED,
    );
    assert_eq!(created["segment"]["id"], "ouvreurs-recents");
    assert_eq!(created["segment"]["contacts"], preview["count"]);
    assert_eq!(created["run"]["segments"][0]["status"], "up_to_date");
    let again = error(
        api.post("/api/segments", &def),
        StatusCode::CONFLICT,
        "conflict",
    );
    assert!(
        again["message"]
            .as_str()
            .unwrap()
            .contains("already exists")
    );

    let page = Api::ok(api.get("/api/segments?sort=size&limit=5"));
    assert_eq!(page["total"], 12);
    assert_eq!(page["segments"].as_array().unwrap().len(), 5);
    let listed = Api::ok(api.get("/api/segments?limit=1000"));
    let cli_list = json_of(segments(b).args(["segment", "list", "--format", "json"]));
    let strip = |v: &Value| {
        // `status` moves with the clock (late after the nightly window).
        let mut v = v.clone();
        for s in v.as_array_mut().unwrap() {
            s.as_object_mut().unwrap().remove("status");
        }
        v
    };
    assert_eq!(strip(&listed["segments"]), strip(&cli_list));
    let shown = Api::ok(api.get("/api/segments/Ouvreurs%20r%C3%A9cents"));
    let cli_show =
        json_of(segments(b).args(["segment", "show", "ouvreurs-recents", "--format", "json"]));
    assert_eq!(shown["criteria"], cli_show["criteria"]);
    assert_eq!(shown["contacts"], cli_show["contacts"]);
    assert_eq!(shown["history"], cli_show["history"]);

    let members =
        Api::ok(api.get("/api/segments/ouvreurs-recents/members?sort=-contact_id&limit=1"));
    let cli_members = json_of(segments(b).args([
        "segment",
        "members",
        "ouvreurs-recents",
        "--sort",
        "-contact_id",
        "--limit",
        "1",
        "--format",
        "json",
    ]));
    assert_eq!(members["rows"], cli_members);
    assert_eq!(members["total"], preview["count"]);
    let since = Api::ok(api.get("/api/segments/ouvreurs-recents/members?since=2100-01-01"));
    assert_eq!(since["total"], 0);
    assert_eq!(since["rows"], json!([]));

    let exported = api.get("/api/segments/ouvreurs-recents/export?format=csv");
    assert_eq!(exported.status(), StatusCode::OK);
    assert!(
        exported.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let http_csv = exported.text().unwrap();
    let out = b.join("cli.csv");
    segments(b)
        .args(["segment", "export", "ouvreurs-recents", "--out"])
        .arg(&out)
        .assert()
        .success();
    assert_eq!(http_csv, std::fs::read_to_string(&out).unwrap());
    let parquet = api.get("/api/segments/ouvreurs-recents/export?format=parquet");
    assert_eq!(parquet.status(), StatusCode::OK);
    assert!(parquet.bytes().unwrap().starts_with(b"PAR1"));

    let history = Api::ok(api.get("/api/segments/ouvreurs-recents/history"));
    let cli_history =
        json_of(segments(b).args(["segment", "history", "ouvreurs-recents", "--format", "json"]));
    assert_eq!(history, cli_history);

    // Edit, pause, resume, refresh, duplicate.
    let mut edited = def.clone();
    edited["name"] = json!("Ouvreurs très récents");
    let e = Api::ok(api.put(
        &format!("/api/segments/ouvreurs-recents?as_of={AS_OF}"),
        &edited,
    ));
    assert_eq!(e["segment"]["name"], "Ouvreurs très récents");
    assert_eq!(
        Api::ok(api.post("/api/segments/ouvreurs-recents/pause", &json!({})))["status"],
        "paused"
    );
    let resumed = Api::ok(api.post(
        &format!("/api/segments/ouvreurs-recents/resume?as_of={AS_OF}"),
        &json!({}),
    ));
    assert_ne!(resumed["segment"]["status"], "paused");
    Api::ok(api.post(
        &format!("/api/segments/ouvreurs-recents/refresh?as_of={AS_OF}"),
        &json!({}),
    ));
    let copy = Api::expect(
        api.post(
            &format!("/api/segments/ouvreurs-recents/duplicate?as_of={AS_OF}"),
            &json!({"name": "Copie"}),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(copy["segment"]["id"], "copie");
    assert_eq!(copy["segment"]["contacts"], preview["count"]);

    // A segment referred to cannot go; then it can.
    let user = json!({"name": "Uses copie", "criteria": {"segment": "copie"}});
    Api::expect(api.post("/api/segments", &user), StatusCode::CREATED);
    let refused = error(
        api.delete("/api/segments/copie"),
        StatusCode::CONFLICT,
        "conflict",
    );
    assert!(
        refused["message"].as_str().unwrap().contains("uses-copie"),
        "{refused}"
    );
    Api::ok(api.delete("/api/segments/uses-copie"));
    assert_eq!(
        Api::ok(api.delete("/api/segments/copie"))["deleted"],
        "copie"
    );
    error(
        api.get("/api/segments/copie"),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );

    // Static segments from ids and from a query; adding, removing, replacing.
    let s = Api::expect(
        api.post(
            "/api/segments",
            &json!({"name": "VIP", "contact_ids": [101, 102]}),
        ),
        StatusCode::CREATED,
    );
    assert_eq!(
        (s["kind"].as_str(), s["contacts"].as_u64()),
        (Some("static"), Some(2))
    );
    let unknown = error(
        api.post(
            "/api/segments",
            &json!({"name": "Ghosts", "contact_ids": [101, 999999]}),
        ),
        StatusCode::BAD_REQUEST,
        "invalid_definition",
    );
    assert_eq!(unknown["path"], "contact_ids");
    let q = Api::expect(
        api.post("/api/segments", &json!({"name": "Q", "query": "SELECT contact_id FROM contacts WHERE contact_id > 104"})),
        StatusCode::CREATED,
    );
    assert_eq!(q["contacts"], 2);
    let add = api
        .req(reqwest::Method::POST, "/api/segments/vip/contacts")
        .json(&json!({"contact_ids": [103]}))
        .send()
        .unwrap();
    assert_eq!(Api::ok(add)["contacts"], 3);
    let rm = api
        .req(reqwest::Method::DELETE, "/api/segments/vip/contacts")
        .json(&json!({"contact_ids": [101]}))
        .send()
        .unwrap();
    assert_eq!(Api::ok(rm)["contacts"], 2);
    let put = api.put("/api/segments/vip/contacts", &json!({"contact_ids": [106]}));
    assert_eq!(Api::ok(put)["contacts"], 1);

    // Errors: a bad definition names its JSON path; unknown ids; bad params.
    let bad = json!({"name": "Bad", "criteria": {"all": [{"field": "email", "op": "is_not_empty"}, {"field": "email", "op": "gt", "value": 3}]}});
    let err = error(
        api.post("/api/segments", &bad),
        StatusCode::BAD_REQUEST,
        "invalid_definition",
    );
    assert_eq!(err["path"], "criteria.all[1].op");
    let err = error(
        api.post("/api/preview", &bad),
        StatusCode::BAD_REQUEST,
        "invalid_definition",
    );
    assert_eq!(err["path"], "criteria.all[1].op");
    // A query that cannot be planned is refused at save, nothing saved.
    let listed = Api::ok(api.get("/api/segments"));
    let never =
        json!({"name": "Never", "criteria": {"any": [{"query": "SELECT * FROM '/etc/passwd'"}]}});
    let err = error(
        api.post("/api/segments", &never),
        StatusCode::BAD_REQUEST,
        "invalid_definition",
    );
    assert_eq!(err["path"], "criteria.any[0].query");
    assert_eq!(Api::ok(api.get("/api/segments")), listed);
    error(
        api.get("/api/segments/nope"),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );
    error(
        api.get("/api/segments/nope/members"),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );
    error(
        api.post("/api/segments/nope/refresh", &json!({})),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );
    error(
        api.get("/api/segments?sort=colour"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.get("/api/segments?status=asleep"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.get("/api/segments?limit=lots"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.get("/api/segments/vip/export?format=xls"),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.get("/api/nothing-here"),
        StatusCode::NOT_FOUND,
        "not_found",
    );
    let not_json = api
        .req(reqwest::Method::POST, "/api/preview")
        .header("content-type", "application/json")
        .body("{\"criteria\": ")
        .send()
        .unwrap();
    error(not_json, StatusCode::BAD_REQUEST, "invalid_json");
    let huge = json!({"criteria": {"all": []}, "description": "x".repeat(5 << 20)});
    error(
        api.post("/api/preview", &huge),
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );
}

#[test]
fn audience_schema_sql_and_imports() {
    let dir = small_base();
    let b = dir.path();
    let api = Api::start(b);

    let body =
        json!({"include": ["email_contacts"], "exclude": ["sms_contacts"], "channel": "email"});
    let count = Api::ok(api.post(&format!("/api/audience?as_of={AS_OF}"), &body));
    let cli = stdout_of(segments(b).args([
        "audience",
        "--include",
        "email_contacts",
        "--exclude",
        "sms_contacts",
        "--channel",
        "email",
        "--as-of",
        AS_OF,
    ]));
    assert_eq!(cli.trim(), format!("{} contact(s)", count["contacts"]));
    let csv = api
        .post(&format!("/api/audience?format=csv&as_of={AS_OF}"), &body)
        .text()
        .unwrap();
    assert!(csv.starts_with("contact_id"), "{csv}");
    assert_eq!(
        csv.lines().count() as u64,
        1 + count["contacts"].as_u64().unwrap()
    );
    error(
        api.post(
            "/api/audience",
            &json!({"include": ["nope"], "channel": "email"}),
        ),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );
    error(
        api.post(
            "/api/audience",
            &json!({"include": ["all_contacts"], "channel": "fax"}),
        ),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // The overlap is `segment overlap`'s.
    let o = Api::ok(api.post(
        "/api/overlap",
        &json!({"segments": ["email_contacts", "sms_contacts"], "only_reachable": "sms"}),
    ));
    let cli = json_of(segments(b).args([
        "segment",
        "overlap",
        "email_contacts",
        "sms_contacts",
        "--only-reachable",
        "sms",
        "--format",
        "json",
    ]));
    assert_eq!(o, cli);
    error(
        api.post("/api/overlap", &json!({"segments": ["nope"]})),
        StatusCode::NOT_FOUND,
        "unknown_segment",
    );
    error(
        api.post("/api/overlap", &json!({"segments": []})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.post(
            "/api/overlap",
            &json!({"segments": ["vip"], "only_reachable": "fax"}),
        ),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );

    // The schema offers each field's operators and choices, the event types
    // with the columns they fill and their operations.
    let schema = Api::ok(api.get("/api/schema"));
    let field = |n: &str| {
        schema["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["name"] == n)
            .cloned()
            .unwrap()
    };
    assert_eq!(field("email_status")["type"], "choice");
    assert!(
        field("email_status")["values"]
            .as_array()
            .unwrap()
            .contains(&json!("hard_bounce"))
    );
    let ops = field("email_optin")["operators"].clone();
    assert!(ops.as_array().unwrap().contains(&json!("is_true")));
    assert!(!ops.as_array().unwrap().contains(&json!("gt")));
    let sent = schema["events"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "email_open")
        .cloned()
        .unwrap();
    let cli_ops = sql_rows(
        b,
        "SELECT count(DISTINCT operation_id) AS n, count(*) AS events FROM events WHERE type = 'email_open'",
    );
    assert_eq!(sent["events"], cli_ops[0]["events"]);
    assert_eq!(
        sent["operations"].as_array().unwrap().len() as u64,
        cli_ops[0]["n"].as_u64().unwrap()
    );
    assert_eq!(schema["imports"].as_array().unwrap().len(), 2);

    // SQL: rows as JSON, or an Arrow IPC stream; writes refused.
    let q = "SELECT contact_id, email FROM contacts ORDER BY contact_id LIMIT 3";
    let rows = Api::ok(api.post("/api/sql", &json!({"query": q})));
    assert_eq!(rows["columns"], json!(["contact_id", "email"]));
    let cli_rows = sql_rows(b, q);
    assert_eq!(rows["rows"], cli_rows);
    let arrow = api.post("/api/sql", &json!({"query": q, "format": "arrow"}));
    assert_eq!(
        arrow.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = arrow.bytes().unwrap();
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(
        std::io::Cursor::new(bytes.to_vec()),
        None,
    )
    .unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 3);
    error(
        api.post("/api/sql", &json!({"query": "DROP TABLE contacts"})),
        StatusCode::FORBIDDEN,
        "read_only",
    );
    error(
        api.post("/api/sql", &json!({"query": "SELECT nope FROM contacts"})),
        StatusCode::BAD_REQUEST,
        "query_error",
    );

    // An import over HTTP equals the same import on the command line.
    let twin = small_base();
    let csv = "contact_id,email,first_name\n102,new-b@x.fr,Bea\n777,z@x.fr,Zed\n";
    let resp = api
        .req(
            reqwest::Method::POST,
            &format!("/api/imports/contacts?file=more.csv&as_of={AS_OF}"),
        )
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .unwrap();
    let imported = Api::expect(resp, StatusCode::CREATED);
    assert_eq!(imported["import"]["rows_added"], 1, "{imported}");
    let file = twin.path().join("more.csv");
    std::fs::write(&file, csv).unwrap();
    segments(twin.path())
        .args(["import", "contacts"])
        .arg(&file)
        .args(["--as-of", AS_OF])
        .assert()
        .success();
    let dump = "SELECT * FROM contacts ORDER BY contact_id";
    assert_eq!(sql_rows(b, dump), sql_rows(twin.path(), dump));
    let counts = |p: &Path| sql_rows(p, "SELECT id, contacts FROM segments ORDER BY id");
    assert_eq!(counts(b), counts(twin.path()));
    let imports = Api::ok(api.get("/api/imports"));
    let name = imports.as_array().unwrap().last().unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        name.starts_with("more "),
        "named after the file, as on the command line: {name}"
    );

    // Multipart, too; a bad row is 422 with its place, and nothing changes.
    let before = version(b);
    let upload = |csv: &'static str| {
        let part = reqwest::blocking::multipart::Part::text(csv).file_name("opens.csv");
        api.req(reqwest::Method::POST, "/api/imports/events")
            .multipart(reqwest::blocking::multipart::Form::new().part("file", part))
            .send()
            .unwrap()
    };
    let resp = upload(
        "contact_id,ts,type\n101,2026-11-01T10:00:00Z,email_open\n101,yesterday,email_open\n",
    );
    let err = error(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_import");
    let place = err["path"].as_str().unwrap();
    assert!(place.starts_with("opens.csv: line 3"), "{err}");
    let message = err["message"].as_str().unwrap();
    assert!(!message.contains("/tmp"), "no server path: {err}");
    assert_eq!(version(b), before);
    let resp = upload("contact_id,ts,type\n101,2026-11-01T10:00:00Z,email_open\n");
    assert_eq!(
        Api::expect(resp, StatusCode::CREATED)["import"]["rows_added"],
        1
    );
    error(
        api.req(reqwest::Method::POST, "/api/imports/animals")
            .body("x")
            .send()
            .unwrap(),
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[test]
fn uploads_over_the_limit_are_refused_whole() {
    let dir = small_base();
    let api = Api::start_with(dir.path(), &["--max-upload", "1K"]);
    let before = version(dir.path());
    let mut csv = String::from("contact_id,email\n");
    for i in 0..200 {
        csv.push_str(&format!("{i},c{i}@x.fr\n"));
    }
    let resp = api
        .req(reqwest::Method::POST, "/api/imports/contacts")
        .body(csv)
        .send()
        .unwrap();
    error(resp, StatusCode::PAYLOAD_TOO_LARGE, "too_large");
    assert_eq!(version(dir.path()), before);
}

/// A query over the server's memory limit: 503, the same message as `segments sql`.
#[test]
fn a_query_over_the_memory_limit_is_503() {
    let dir = small_base();
    let api = Api::start_with(dir.path(), &["--memory-limit", "1MiB"]);
    let query = "SELECT count(DISTINCT v) AS n FROM generate_series(1, 2000000) AS t(v)";
    let err = error(
        api.post("/api/sql", &json!({"query": query})),
        StatusCode::SERVICE_UNAVAILABLE,
        "memory_limit",
    );
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("query stopped: it needs more memory than its limit"),
        "{err}"
    );
    // The server goes on.
    Api::ok(api.post("/api/sql", &json!({"query": "SELECT 1 AS one"})));
}

/// A writer of another process holding the base: writes answer 409 naming
/// it, or wait for it with `?wait=`.
#[test]
fn a_busy_writer_is_named_or_waited_for() {
    let dir = small_base();
    let b = dir.path();
    let api = Api::start(b);
    let holder = super::common::HeldWriter::start(b);
    let busy = error(
        api.post("/api/segments/email_contacts/pause", &json!({})),
        StatusCode::CONFLICT,
        "writer_busy",
    );
    assert!(
        busy["holder"]["command"]
            .as_str()
            .unwrap()
            .contains("segment pause sms_contacts"),
        "{busy}"
    );
    error(
        api.post("/api/recompute", &json!({})),
        StatusCode::CONFLICT,
        "writer_busy",
    );
    // Reads go on meanwhile.
    Api::ok(api.get("/api/segments"));
    // With a wait, the write goes through once the holder is done.
    let release = holder.release_after(Duration::from_millis(500));
    let done = Api::ok(api.post("/api/segments/email_contacts/pause?wait=60s", &json!({})));
    assert_eq!(done["status"], "paused");
    assert!(release.join().unwrap().success());
    error(
        api.post("/api/segments/email_contacts/pause?wait=soon", &json!({})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
}

/// The nightly job over HTTP: a run id, its progress, its events, its report.
#[test]
fn recompute_runs_in_the_background_with_its_progress() {
    let dir = small_base();
    let api = Api::start(dir.path());
    let started = Api::expect(
        api.post(&format!("/api/recompute?as_of={AS_OF}"), &json!({})),
        StatusCode::ACCEPTED,
    );
    let id = started["id"].as_u64().unwrap();
    // The event stream ends with the run's final state.
    let events = api.get(&format!("/api/runs/{id}/events"));
    assert_eq!(events.headers()["content-type"], "text/event-stream");
    let text = events.text().unwrap();
    let last = text
        .split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .last()
        .unwrap()
        .to_string();
    assert!(last.contains("event: end"), "{text}");
    let data: Value =
        serde_json::from_str(last.lines().find_map(|l| l.strip_prefix("data: ")).unwrap()).unwrap();
    assert_eq!(data["state"], "done", "{data}");
    let run = Api::ok(api.get(&format!("/api/runs/{id}")));
    assert_eq!(run, data);
    assert_eq!(run["done"], run["total"]);
    assert_eq!(run["report"]["segments"].as_array().unwrap().len(), 11);
    assert_eq!(Api::ok(api.get("/api/runs")).as_array().unwrap().len(), 1);
    // From the results the imports' refresh kept; with `full`, everything
    // is evaluated again, to the same segments.
    let fresh = &run["report"]["freshness"];
    assert_eq!(fresh["mode"], "incremental", "{fresh}");
    let full = Api::expect(
        api.post(
            &format!("/api/recompute?as_of={AS_OF}&full=true"),
            &json!({}),
        ),
        StatusCode::ACCEPTED,
    );
    let full_id = full["id"].as_u64().unwrap();
    let _ = api
        .get(&format!("/api/runs/{full_id}/events"))
        .text()
        .unwrap();
    let again = Api::ok(api.get(&format!("/api/runs/{full_id}")));
    assert_eq!(again["state"], "done", "{again}");
    let f = &again["report"]["freshness"];
    assert_eq!(f["mode"], "full", "{f}");
    assert_eq!(f["events"]["kept"], 0, "{f}");
    let sizes = |r: &Value| -> Vec<(String, u64)> {
        r["report"]["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["size"].as_u64().unwrap(),
                )
            })
            .collect()
    };
    assert_eq!(sizes(&again), sizes(&run));
    error(
        api.post("/api/recompute?full=maybe", &json!({})),
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    error(
        api.get("/api/runs/99"),
        StatusCode::NOT_FOUND,
        "unknown_run",
    );
}

/// 50 readers listing the segments while the nightly job publishes: each
/// answer is one version whole, the old or the new.
#[test]
fn concurrent_readers_see_one_version_whole() {
    let dir = tempfile::tempdir().unwrap();
    let b = dir.path();
    segments(b)
        .args([
            "gen",
            "--contacts",
            "20000",
            "--events-per-contact",
            "10",
            "--as-of",
            AS_OF,
        ])
        .assert()
        .success();
    let api = std::sync::Arc::new(Api::start(b));
    let old = version(b);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..50)
        .map(|_| {
            let api = api.clone();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut seen = Vec::new();
                loop {
                    let done = stop.load(std::sync::atomic::Ordering::SeqCst);
                    let page = Api::ok(api.get("/api/segments?limit=10000"));
                    seen.push(page);
                    if done {
                        return seen;
                    }
                }
            })
        })
        .collect();
    let started = Api::expect(
        api.post("/api/recompute?as_of=2026-11-24T12:00:00Z", &json!({})),
        StatusCode::ACCEPTED,
    );
    let id = started["id"].as_u64().unwrap();
    loop {
        let run = Api::ok(api.get(&format!("/api/runs/{id}")));
        if run["finished_at"].is_string() {
            assert_eq!(run["state"], "done", "{run}");
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let new = version(b);
    assert!(new > old);
    let computed = |page: &Value| -> Vec<(String, Value, Value)> {
        page["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                (
                    s["id"].as_str().unwrap().to_string(),
                    s["computed_at"].clone(),
                    s["contacts"].clone(),
                )
            })
            .collect()
    };
    let mut by_version: std::collections::BTreeMap<u64, Vec<(String, Value, Value)>> =
        Default::default();
    let mut answers = 0;
    for r in readers {
        for page in r.join().unwrap() {
            answers += 1;
            let v = page["version"].as_u64().unwrap();
            assert!(v == old || v == new, "version {v}: neither {old} nor {new}");
            let seen = computed(&page);
            let first = by_version.entry(v).or_insert_with(|| seen.clone());
            assert_eq!(*first, seen, "two answers of version {v} differ");
        }
    }
    assert!(by_version.contains_key(&new), "the new version was read");
    if let Some(before) = by_version.get(&old) {
        let after = &by_version[&new];
        for (b, a) in before.iter().zip(after) {
            assert_ne!(b.1, a.1, "segment {} recomputed in the new version", b.0);
        }
    }
    eprintln!(
        "{answers} answers; versions read: {:?}",
        by_version.keys().collect::<Vec<_>>()
    );
    assert!(answers >= 50);
}

/// The committed `openapi.json` is the document the server serves, and is
/// current (`UPDATE_GOLDEN=1 cargo test openapi` rewrites it).
#[test]
fn openapi_document_is_committed_and_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("openapi.json");
    let now = segments::http::openapi::json();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &now).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == now,
        "openapi.json is not current: run `UPDATE_GOLDEN=1 cargo test openapi`"
    );
    let doc: Value = serde_json::from_str(&now).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    // Every route of the router is documented.
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/segments",
        "/api/segments/{id}",
        "/api/segments/{id}/refresh",
        "/api/segments/{id}/pause",
        "/api/segments/{id}/resume",
        "/api/segments/{id}/duplicate",
        "/api/segments/{id}/contacts",
        "/api/segments/{id}/members",
        "/api/segments/{id}/history",
        "/api/segments/{id}/export",
        "/api/preview",
        "/api/audience",
        "/api/overlap",
        "/api/schema",
        "/api/sql",
        "/api/imports",
        "/api/imports/{kind}",
        "/api/recompute",
        "/api/runs",
        "/api/runs/{id}",
        "/api/runs/{id}/events",
        "/api/login",
        "/api/logout",
        "/api/session",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
}
