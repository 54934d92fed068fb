//! Random criteria trees over the data of a base, values drawn near it.

use super::*;

pub(super) struct Gen<'a> {
    pub(super) rng: &'a mut Rng,
    pub(super) data: &'a Data,
    pub(super) has_events: bool,
    /// The segments a tree may refer to.
    pub(super) segments: &'a [&'a str],
}

impl Gen<'_> {
    pub(super) fn tree(&mut self, depth: u32) -> Value {
        if depth == 0 {
            return self.leaf();
        }
        match self.rng.below(10) {
            0..=7 => {
                let key = if self.rng.chance(0.5) { "all" } else { "any" };
                let n = self.rng.range(1, 3) as usize;
                let mut kids = Vec::new();
                for i in 0..n {
                    let d = if i == 0 {
                        depth - 1
                    } else {
                        self.rng.below(depth as usize) as u32
                    };
                    kids.push(self.tree(d));
                }
                // The deep child is not always first.
                if kids.len() > 1 && self.rng.chance(0.5) {
                    kids.reverse();
                }
                obj(key, Value::Array(kids))
            }
            _ => json!({"not": self.tree(depth - 1)}),
        }
    }

    pub(super) fn leaf(&mut self) -> Value {
        let r = self.rng.below(100);
        if r < 55 {
            self.field()
        } else if r < 85 && self.has_events {
            self.behavior()
        } else if r < 92 {
            json!({"segment": self.rng.pick(self.segments)})
        } else if r < 97 {
            let imports: &[&str] = if self.has_events {
                IMPORTS
            } else {
                &IMPORTS[..2]
            };
            json!({"import": self.rng.pick(imports)})
        } else if r < 99 || !self.has_events {
            obj(if self.rng.chance(0.5) { "all" } else { "any" }, json!([]))
        } else {
            self.field()
        }
    }

    pub(super) fn texts(&mut self, pool: &[&str]) -> Value {
        if self.rng.chance(0.2) {
            return json!(self.rng.pick(pool));
        }
        let k = self.rng.range(1, 3);
        Value::Array((0..k).map(|_| json!(self.rng.pick(pool))).collect())
    }

    pub(super) fn date(&mut self) -> String {
        let d = *self.rng.pick(&self.data.dates);
        let d = d + ChronoDuration::days(*self.rng.pick(&[0, 0, 0, -1, 1]));
        d.format("%Y-%m-%d").to_string()
    }

    pub(super) fn date_pair(&mut self) -> Value {
        let (a, b) = (self.date(), self.date());
        if a <= b { json!([a, b]) } else { json!([b, a]) }
    }

    pub(super) fn duration(&mut self, hours: bool) -> String {
        let mut pool = vec![
            "0d", "1d", "2d", "7d", "30d", "1w", "2w", "90d", "180d", "365d", "3650d",
        ];
        if hours {
            pool.extend(["1h", "12h", "24h", "48h", "0h"]);
        }
        self.rng.pick(&pool).to_string()
    }

    pub(super) fn number(&mut self, pool: &[f64]) -> f64 {
        *self.rng.pick(pool)
    }

    pub(super) fn number_cond(&mut self, pool: &[f64]) -> (&'static str, Value) {
        let op = *self.rng.pick(&[
            "eq",
            "neq",
            "lt",
            "lte",
            "gt",
            "gte",
            "between",
            "is_empty",
            "is_not_empty",
        ]);
        let v = match op {
            "between" => {
                let (a, b) = (self.number(pool), self.number(pool));
                json!([a.min(b), a.max(b)])
            }
            "is_empty" | "is_not_empty" => Value::Null,
            _ => json!(self.number(pool)),
        };
        (op, v)
    }

    /// (op, value) of a date or timestamp condition.
    pub(super) fn date_cond(&mut self, timestamp: bool) -> (&'static str, Value) {
        let op = *self.rng.pick(&[
            "eq",
            "neq",
            "before",
            "after",
            "between",
            "within_last",
            "more_than_ago",
            "anniversary_within",
            "is_empty",
            "is_not_empty",
        ]);
        let v = match op {
            "eq" | "neq" | "before" | "after" => json!(self.date()),
            "between" => self.date_pair(),
            "within_last" | "more_than_ago" => json!(self.duration(timestamp)),
            "anniversary_within" => json!(
                *self
                    .rng
                    .pick(&["0d", "1d", "2d", "7d", "1w", "30d", "365d"])
            ),
            _ => Value::Null,
        };
        (op, v)
    }

    pub(super) fn text_cond(&mut self, pool: &[&str]) -> (&'static str, Value) {
        let op = *self.rng.pick(&[
            "eq",
            "neq",
            "in",
            "not_in",
            "starts_with",
            "not_starts_with",
            "ends_with",
            "not_ends_with",
            "contains",
            "not_contains",
            "is_empty",
            "is_not_empty",
        ]);
        let v = match op {
            "in" | "not_in" => self.texts(pool),
            "is_empty" | "is_not_empty" => Value::Null,
            _ => json!(self.rng.pick(pool)),
        };
        (op, v)
    }

    pub(super) fn cond(&mut self, field: &str, op: &str, value: Value, text: bool) -> Value {
        let mut o = serde_json::Map::new();
        o.insert("field".into(), json!(field));
        o.insert("op".into(), json!(op));
        if !value.is_null() {
            o.insert("value".into(), value);
        }
        if text {
            match self.rng.below(8) {
                0 | 1 => {
                    o.insert("case_sensitive".into(), json!(true));
                }
                2 => {
                    o.insert("case_sensitive".into(), json!(false));
                }
                _ => {}
            }
        }
        Value::Object(o)
    }

    pub(super) fn field(&mut self) -> Value {
        let city_pool: Vec<&str> = CITIES.iter().chain(CITY_QUERIES).copied().collect();
        match self.rng.below(9) {
            0 => {
                let (op, v) = self.text_cond(&city_pool);
                self.cond("city", op, v, true)
            }
            1 => {
                let pool: Vec<&str> = EMAILS.iter().chain(EMAIL_QUERIES).copied().collect();
                let (op, v) = self.text_cond(&pool);
                self.cond("email", op, v, true)
            }
            2 => {
                let (op, v) = self.number_cond(&[
                    -3.0, 0.0, 1.0, 2.5, 5.0, 10.0, 11.0, 42.0, 43.0, 100.0, -1.5,
                ]);
                self.cond("score", op, v, false)
            }
            3 => {
                let (op, v) =
                    self.number_cond(&[-2.5, 0.0, 5.0, 10.5, 20.0, 99.75, 100.0, 250.0, 50.0]);
                self.cond("spent", op, v, false)
            }
            4 => {
                let (op, v) = self.date_cond(false);
                self.cond("birth_date", op, v, false)
            }
            5 => {
                let (op, v) = self.date_cond(true);
                self.cond("created_at", op, v, false)
            }
            6 => {
                let op = *self
                    .rng
                    .pick(&["is_true", "is_false", "is_empty", "is_not_empty"]);
                self.cond("email_optin", op, Value::Null, false)
            }
            7 => {
                let op = *self
                    .rng
                    .pick(&["eq", "neq", "in", "not_in", "is_empty", "is_not_empty"]);
                let v = match op {
                    "in" | "not_in" => self.texts(LOYALTY),
                    "eq" | "neq" => json!(self.rng.pick(LOYALTY)),
                    _ => Value::Null,
                };
                // case_sensitive is accepted and ignored on choices (exact compare).
                self.cond("loyalty", op, v, true)
            }
            _ => {
                let op = *self.rng.pick(&[
                    "contains_any",
                    "contains_all",
                    "contains_none",
                    "is_empty",
                    "is_not_empty",
                ]);
                let v = match op {
                    "is_empty" | "is_not_empty" => Value::Null,
                    _ => self.texts(TAG_QUERIES),
                };
                self.cond("interests", op, v, true)
            }
        }
    }

    pub(super) fn bound(&mut self) -> Value {
        if self.rng.chance(0.5) {
            json!(self.date())
        } else {
            json!(self.duration(true))
        }
    }

    pub(super) fn behavior(&mut self) -> Value {
        let mut b = serde_json::Map::new();
        let types = [
            "email_open",
            "purchase",
            "web_visit",
            "email_click",
            "sms_click",
        ];
        b.insert("event".into(), self.texts(&types));
        if self.rng.chance(0.35) {
            b.insert("operation".into(), self.texts(OPERATIONS));
        }
        if self.rng.chance(0.4) {
            let n = self.rng.range(1, 2);
            let mut ws = Vec::new();
            for _ in 0..n {
                ws.push(match self.rng.below(6) {
                    0 | 1 => {
                        let pool: Vec<&str> = URLS.iter().chain(URL_QUERIES).copied().collect();
                        let (op, v) = self.text_cond(&pool);
                        self.cond("url", op, v, true)
                    }
                    2 | 3 => {
                        let (op, v) = self.number_cond(AMOUNTS);
                        self.cond("amount", op, v, false)
                    }
                    4 => {
                        let (op, v) = self.text_cond(OPERATIONS);
                        let field = if self.rng.chance(0.7) {
                            "operation_id"
                        } else {
                            "name"
                        };
                        self.cond(field, op, v, true)
                    }
                    _ => {
                        let (op, v) = self.date_cond(true);
                        self.cond("ts", op, v, false)
                    }
                });
            }
            b.insert("where".into(), Value::Array(ws));
        }
        if self.rng.chance(0.6) {
            let w = match self.rng.below(3) {
                0 | 1 => json!(self.duration(true)),
                _ => {
                    let mut o = serde_json::Map::new();
                    match self.rng.below(3) {
                        0 => {
                            o.insert("after".into(), self.bound());
                        }
                        1 => {
                            o.insert("before".into(), self.bound());
                        }
                        _ => {
                            o.insert("after".into(), self.bound());
                            o.insert("before".into(), self.bound());
                        }
                    }
                    Value::Object(o)
                }
            };
            b.insert("within".into(), w);
        }
        if self.rng.chance(0.75) {
            let agg = *self.rng.pick(&[
                "count", "count", "sum", "avg", "min", "max", "first", "last",
            ]);
            let mut h = serde_json::Map::new();
            if agg != "count" || self.rng.chance(0.7) {
                h.insert("agg".into(), json!(agg));
            }
            let (op, v) = match agg {
                "count" => self.number_cond(&[0.0, 1.0, 2.0, 3.0, 5.0]),
                "sum" => self.number_cond(&[0.0, 5.0, 10.5, 20.0, 30.5, 100.0, 200.0, -2.5, 250.0]),
                "avg" | "min" | "max" => self.number_cond(AMOUNTS),
                _ => self.date_cond(true),
            };
            if matches!(agg, "sum" | "avg" | "min" | "max") && self.rng.chance(0.3) {
                h.insert("field".into(), json!("amount"));
            }
            h.insert("op".into(), json!(op));
            if !v.is_null() {
                h.insert("value".into(), v);
            }
            b.insert("having".into(), Value::Object(h));
        }
        json!({"behavior": Value::Object(b)})
    }
}

pub(super) fn obj(key: &str, v: Value) -> Value {
    let mut o = serde_json::Map::new();
    o.insert(key.to_string(), v);
    Value::Object(o)
}

/// Every subtree of a criteria tree (the tree itself included).
pub(super) fn subtrees(v: &Value, out: &mut Vec<Value>) {
    out.push(v.clone());
    if let Some(o) = v.as_object() {
        for k in ["all", "any"] {
            if let Some(Value::Array(a)) = o.get(k) {
                a.iter().for_each(|c| subtrees(c, out));
            }
        }
        if let Some(c) = o.get("not") {
            subtrees(c, out);
        }
    }
}

pub(super) fn depth(v: &Value) -> usize {
    let o = v.as_object().unwrap();
    if let Some(Value::Array(a)) = o.get("all").or_else(|| o.get("any")) {
        1 + a.iter().map(depth).max().unwrap_or(0)
    } else if let Some(c) = o.get("not") {
        1 + depth(c)
    } else {
        0
    }
}
