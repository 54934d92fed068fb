//! Criterion benches: bitmap algebra of nested segments, criteria parsing
//! and planning, and the preview path on a small generated base.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use roaring::RoaringBitmap;

fn random_bitmap(rng: &mut SmallRng, universe: u32, density: f64) -> RoaringBitmap {
    (0..universe).filter(|_| rng.random_bool(density)).collect()
}

fn bitmap_algebra(c: &mut Criterion) {
    let mut group = c.benchmark_group("bitmap_algebra");
    for universe in [100_000u32, 1_000_000] {
        let mut rng = SmallRng::seed_from_u64(7);
        let sets: Vec<RoaringBitmap> = [0.5, 0.3, 0.1, 0.05, 0.7]
            .iter()
            .map(|d| random_bitmap(&mut rng, universe, *d))
            .collect();
        group.throughput(Throughput::Elements(universe as u64));
        // (A ∪ B) ∩ C − D, then ∩ E: a five-operand audience, counted.
        group.bench_function(format!("five_operand_count/{universe}"), |b| {
            b.iter(|| {
                let x = (&sets[0] | &sets[1]) & &sets[2];
                let x = x - &sets[3];
                black_box(x.intersection_len(&sets[4]))
            })
        });
        group.bench_function(format!("serialize/{universe}"), |b| {
            b.iter_batched(
                || Vec::with_capacity(sets[0].serialized_size()),
                |mut buf| {
                    sets[0].serialize_into(&mut buf).unwrap();
                    black_box(buf.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn criteria_parsing(c: &mut Criterion) {
    let defs = segments::synth::example_definitions().unwrap();
    let texts: Vec<String> = defs
        .iter()
        .map(|d| {
            serde_json::json!({"id": d.id, "name": d.name, "criteria": d.criteria_json}).to_string()
        })
        .collect();
    let mut group = c.benchmark_group("criteria");
    group.throughput(Throughput::Elements(texts.len() as u64));
    group.bench_function("parse_examples", |b| {
        b.iter(|| {
            for t in &texts {
                black_box(segments::criteria::Definition::parse_str(t, "bench").unwrap());
            }
        })
    });
    group.bench_function("plan_examples", |b| {
        b.iter(|| {
            let mut plan = segments::compile::Plan::default();
            for d in &defs {
                black_box(plan.add(&d.criteria));
            }
            black_box(plan.contact_leaves.len() + plan.event_leaves.len())
        })
    });
    group.finish();
}

fn preview_small_base(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let as_of = chrono::Utc::now();
    segments::synth::generate(
        dir.path(),
        &segments::synth::GenOptions {
            contacts: 20_000,
            events_per_contact: 30,
            seed: 1,
            as_of,
        },
    )
    .unwrap();
    let base = segments::base::Base::open(dir.path()).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let defs = segments::synth::example_definitions().unwrap();
    let behaviour = defs
        .iter()
        .find(|d| d.id == "gros-acheteurs")
        .unwrap()
        .clone();
    let field = defs.iter().find(|d| d.id == "parisiens").unwrap().clone();
    let mut group = c.benchmark_group("preview_20k");
    group.sample_size(20);
    for def in [behaviour, field] {
        group.bench_function(def.id.clone(), |b| {
            b.iter(|| {
                let snap = base.snapshot().unwrap();
                black_box(
                    rt.block_on(segments::jobs::segments::preview(&snap, &def, as_of))
                        .unwrap()
                        .count,
                )
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bitmap_algebra,
    criteria_parsing,
    preview_small_base
);
criterion_main!(benches);
