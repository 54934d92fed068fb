//! The graph of references between segments: cycle detection at save, and
//! the dependency order of the nightly job.

use std::collections::{BTreeMap, BTreeSet};

use crate::base::Manifest;
use crate::criteria::Criterion;
use crate::error::Result;

/// Segment id → ids of the segments it refers to.
#[derive(Debug, Default, Clone)]
pub struct SegmentGraph {
    pub deps: BTreeMap<String, BTreeSet<String>>,
}

impl SegmentGraph {
    pub fn add(&mut self, id: &str, deps: impl IntoIterator<Item = String>) {
        self.deps.insert(id.to_string(), deps.into_iter().collect());
    }

    /// A cycle through `start`, as `a → b → c → a`, if there is one.
    pub fn cycle_from(&self, start: &str) -> Option<Vec<String>> {
        fn dfs(
            g: &SegmentGraph,
            node: &str,
            start: &str,
            path: &mut Vec<String>,
            seen: &mut BTreeSet<String>,
        ) -> bool {
            for d in g.deps.get(node).into_iter().flatten() {
                if d == start {
                    path.push(d.clone());
                    return true;
                }
                if seen.insert(d.clone()) {
                    path.push(d.clone());
                    if dfs(g, d, start, path, seen) {
                        return true;
                    }
                    path.pop();
                }
            }
            false
        }
        let mut path = vec![start.to_string()];
        let mut seen = BTreeSet::new();
        dfs(self, start, start, &mut path, &mut seen).then_some(path)
    }

    /// Dependencies first; each inner list can run in parallel. Nodes on a
    /// cycle (which saving refuses) come out last, in one final level.
    pub fn levels(&self) -> Vec<Vec<String>> {
        let mut done: BTreeSet<String> = BTreeSet::new();
        let mut out = Vec::new();
        let all: BTreeSet<&String> = self.deps.keys().collect();
        loop {
            let level: Vec<String> = all
                .iter()
                .filter(|n| !done.contains(n.as_str()))
                .filter(|n| {
                    self.deps[n.as_str()]
                        .iter()
                        .all(|d| done.contains(d) || !self.deps.contains_key(d))
                })
                .map(|n| n.to_string())
                .collect();
            if level.is_empty() {
                let rest: Vec<String> = all
                    .iter()
                    .filter(|n| !done.contains(n.as_str()))
                    .map(|n| n.to_string())
                    .collect();
                if !rest.is_empty() {
                    out.push(rest);
                }
                return out;
            }
            done.extend(level.iter().cloned());
            out.push(level);
        }
    }

    /// `id` and everything it depends on, transitively.
    pub fn closure(&self, ids: &[String]) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let mut stack: Vec<String> = ids.to_vec();
        while let Some(n) = stack.pop() {
            if out.insert(n.clone()) {
                stack.extend(self.deps.get(&n).into_iter().flatten().cloned());
            }
        }
        out
    }

    /// Segments that refer to `id` directly.
    pub fn dependants(&self, id: &str) -> Vec<String> {
        self.deps
            .iter()
            .filter(|(_, d)| d.contains(id))
            .map(|(k, _)| k.clone())
            .collect()
    }
}

pub fn resolve_refs(m: &Manifest, c: &Criterion, self_id: &str, self_name: &str) -> Vec<String> {
    c.segment_refs()
        .into_iter()
        .filter_map(|r| {
            if r == self_id || r == self_name {
                Some(self_id.to_string())
            } else {
                m.segment(&r).map(|s| s.id.clone())
            }
        })
        .collect()
}

/// The reference graph of every dynamic segment of a version.
pub fn graph_of(m: &Manifest) -> Result<SegmentGraph> {
    let mut g = SegmentGraph::default();
    for s in &m.segments {
        let deps = match &s.criteria {
            Some(c) => resolve_refs(m, &Criterion::parse(c, "criteria")?, &s.id, &s.name),
            None => Vec::new(),
        };
        g.add(&s.id, deps);
    }
    Ok(g)
}
