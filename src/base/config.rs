//! The base's configuration file, `segments.toml`: time zone, refresh
//! threshold, nightly window, activity definition and declared fields.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveTime;
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use crate::base::schema::FieldType;
use crate::error::{Error, Place, Result};

pub const CONFIG_FILE: &str = "segments.toml";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// IANA time zone in which calendar days are counted (default UTC).
    #[serde(default = "default_tz")]
    pub time_zone: String,
    /// After an import, recompute every active segment when there are fewer
    /// active segments than this; otherwise only mark them for refresh.
    #[serde(default = "default_threshold")]
    pub auto_refresh_threshold: usize,
    /// The nightly job is expected to run between these local times; a segment
    /// not computed since the start of the last window is `late`.
    #[serde(default)]
    pub nightly_window: NightlyWindow,
    /// Separator of values inside a tags cell of a CSV file.
    #[serde(default = "default_tags_separator")]
    pub tags_separator: String,
    /// Criteria of `active_contacts` (JSON criteria language, written as TOML).
    #[serde(default = "default_activity")]
    pub activity: toml::Value,
    /// Declared or overridden field types, by column name.
    #[serde(default)]
    pub fields: BTreeMap<String, FieldType>,
    /// `segments serve`: who may connect.
    #[serde(default, skip_serializing_if = "ServeConfig::is_empty")]
    pub serve: ServeConfig,
    /// Days of detailed history per segment: older computations keep one
    /// point a day (its size, the day's entries and exits) and lose their
    /// entry and exit bitmaps. 0 keeps every detail.
    #[serde(default = "default_history_days")]
    pub history_days: u32,
    /// After an events import, a month holding more files than this is
    /// merged into one (`segments compact` does it for every month).
    #[serde(default = "default_compact_after_files")]
    pub compact_after_files: usize,
    /// A recompute that brings the kept latest times of matching events up
    /// to date writes them again only when the events files it folded in
    /// hold more than this share of the base's events (in percent); below
    /// it, the kept times stand and the next recompute folds those files in
    /// again (an import of a few events need not rewrite times of every
    /// contact). 0 writes them every time.
    #[serde(default = "default_latest_rewrite_percent")]
    pub latest_rewrite_percent: u32,
}

/// The user and password of `segments serve` (the environment variables
/// `SEGMENTS_USER` and `SEGMENTS_PASSWORD` take precedence), and more
/// accounts of the HTTP API, each with its role:
///
/// ```toml
/// [serve]
/// user = "crm"
/// password = "..."
/// [[serve.users]]
/// user = "reports"
/// password = "..."
/// role = "read"
/// ```
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<Account>,
}

/// Who may use the HTTP API, and what for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Account {
    pub user: String,
    pub password: String,
    #[serde(default)]
    pub role: Role,
}

/// `write` may change the base through its verbs; `read` may only read it
/// (list, show, members, history, export, preview, schema, SQL).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    #[default]
    Write,
    Read,
}

impl ServeConfig {
    fn is_empty(&self) -> bool {
        self.user.is_none() && self.password.is_none() && self.users.is_empty()
    }

    /// Every account: the main user (role write) when it has a password,
    /// then `[[serve.users]]`.
    pub fn accounts(&self) -> Vec<Account> {
        let (user, password) = self.credentials();
        let main = (!password.is_empty()).then_some(Account {
            user,
            password,
            role: Role::Write,
        });
        main.into_iter()
            .chain(
                self.users
                    .iter()
                    .filter(|a| !a.password.is_empty())
                    .cloned(),
            )
            .collect()
    }

    /// The user and password to require: `SEGMENTS_USER` and
    /// `SEGMENTS_PASSWORD`, else these settings; the user defaults to
    /// `segments`, the password to none (and then nothing is served).
    pub fn credentials(&self) -> (String, String) {
        let user = std::env::var("SEGMENTS_USER")
            .ok()
            .or_else(|| self.user.clone())
            .unwrap_or_else(|| "segments".into());
        let password = std::env::var("SEGMENTS_PASSWORD")
            .ok()
            .or_else(|| self.password.clone())
            .unwrap_or_default();
        (user, password)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NightlyWindow {
    pub start: String,
    pub end: String,
}

impl Default for NightlyWindow {
    fn default() -> Self {
        NightlyWindow {
            start: "01:00".into(),
            end: "06:00".into(),
        }
    }
}

fn default_tz() -> String {
    "UTC".into()
}
fn default_threshold() -> usize {
    200
}
fn default_history_days() -> u32 {
    400
}
fn default_compact_after_files() -> usize {
    8
}
fn default_latest_rewrite_percent() -> u32 {
    1
}
fn default_tags_separator() -> String {
    ";".into()
}

/// Default activity: opened or clicked an e-mail, clicked an SMS, submitted a
/// form, visited the site or purchased, within the last 180 days.
pub fn default_activity() -> toml::Value {
    let json = serde_json::json!({"behavior": {
        "event": ["email_open", "email_click", "sms_click", "form_submit", "web_visit", "purchase"],
        "within": "180d"
    }});
    toml::Value::try_from(json).expect("static activity criteria convert to TOML")
}

impl Default for Config {
    fn default() -> Self {
        Config {
            time_zone: default_tz(),
            auto_refresh_threshold: default_threshold(),
            nightly_window: NightlyWindow::default(),
            tags_separator: default_tags_separator(),
            activity: default_activity(),
            fields: BTreeMap::new(),
            serve: ServeConfig::default(),
            history_days: default_history_days(),
            compact_after_files: default_compact_after_files(),
            latest_rewrite_percent: default_latest_rewrite_percent(),
        }
    }
}

impl Config {
    pub fn load(dir: &Path) -> Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        let config: Config = toml::from_str(&text)
            .map_err(|e| Error::input(&path, Place::File("configuration"), e.to_string()))?;
        config
            .check()
            .map_err(|m| Error::input(&path, Place::File("configuration"), m))?;
        Ok(config)
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("configuration serializes")
    }

    fn check(&self) -> std::result::Result<(), String> {
        self.tz()?;
        self.window_start()?;
        parse_hm(&self.nightly_window.end)?;
        if self.tags_separator.is_empty() {
            return Err("tags_separator must not be empty".into());
        }
        Ok(())
    }

    pub fn tz(&self) -> std::result::Result<Tz, String> {
        self.time_zone
            .parse::<Tz>()
            .map_err(|_| format!("unknown time zone {:?}", self.time_zone))
    }

    pub fn window_start(&self) -> std::result::Result<NaiveTime, String> {
        parse_hm(&self.nightly_window.start)
    }

    /// The activity criteria as JSON.
    pub fn activity_json(&self) -> serde_json::Value {
        serde_json::to_value(&self.activity).unwrap_or(serde_json::Value::Null)
    }
}

fn parse_hm(s: &str) -> std::result::Result<NaiveTime, String> {
    NaiveTime::parse_from_str(s, "%H:%M").map_err(|_| format!("invalid time {s:?}, expected HH:MM"))
}
