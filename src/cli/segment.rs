//! `segments segment ...`: each subcommand parsed, one verb called, its
//! result printed.

use super::*;

/// The columns of `segment list` (and the head of `segment show`).
pub(super) const SEGMENT_COLUMNS: &[&str] = &[
    "id",
    "name",
    "kind",
    "status",
    "contacts",
    "email_optins",
    "sms_optins",
    "computed_at",
    "duration_ms",
];

/// A typed result as the JSON object listing commands print.
pub(super) fn row(value: &impl serde::Serialize) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::to_value(value)?)
}

pub(super) async fn segment(dir: &Path, cmd: SegmentCmd) -> anyhow::Result<ExitCode> {
    let base = open(dir)?;
    match cmd {
        SegmentCmd::Preview { file, as_of } => {
            let def = read_definition(&file)?;
            let snap = base.snapshot()?;
            let p = seg::preview(&snap, &def, now_or(as_of)).await?;
            println!("{} contact(s) ({} ms)", p.count, p.duration_ms);
            if !p.sample.is_empty() {
                let s: Vec<String> = p.sample.iter().map(u64::to_string).collect();
                println!("sample: {}", s.join(", "));
            }
        }
        SegmentCmd::Create {
            static_: true,
            name,
            id,
            source,
            ..
        } => {
            let name = name.expect("clap requires --name with --static");
            let source = source.source()?;
            let ((id, n), _) = change(&base, &describe("segment create --static"), async |w| {
                seg::create_static(w, id.as_deref(), &name, &source).await
            })
            .await?;
            println!("created static segment {id}: {n} contact(s)");
        }
        SegmentCmd::Add { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Add, source).await;
        }
        SegmentCmd::Remove { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Remove, source).await;
        }
        SegmentCmd::Replace { id, source } => {
            return change_static(&base, &id, seg::StaticChange::Replace, source).await;
        }
        SegmentCmd::Create { file, as_of, .. } => {
            let file = file.expect("clap requires FILE without --static");
            let def = read_definition(&file)?;
            let (report, _) = change(&base, &describe("segment create"), async |w| {
                seg::create(w, &def, now_or(as_of)).await
            })
            .await?;
            return finish_compute(&report, &format!("created segment {}", def.id));
        }
        SegmentCmd::Edit { id, file, as_of } => {
            let def = read_definition(&file)?;
            let (report, _) = change(&base, &describe("segment edit"), async |w| {
                seg::edit(w, &id, &def, now_or(as_of)).await
            })
            .await?;
            return finish_compute(&report, &format!("updated segment {id}"));
        }
        SegmentCmd::Duplicate { id, name, as_of } => {
            let ((def, source, report), _) =
                change(&base, &describe("segment duplicate"), async |w| {
                    seg::duplicate(w, &id, &name, now_or(as_of)).await
                })
                .await?;
            return finish_compute(
                &report,
                &format!("created segment {} from {source}", def.id),
            );
        }
        SegmentCmd::Delete { id } => {
            let (id, _) = change(&base, &describe("segment delete"), async |w| {
                seg::delete(w, &id)
            })
            .await?;
            println!("deleted segment {id} (its contacts stay in the base)");
        }
        SegmentCmd::Pause { id } => {
            let (id, _) = change(&base, &describe("segment pause"), async |w| {
                seg::set_paused(w, &id, true)
            })
            .await?;
            println!("paused {id}: its members stay as last computed");
        }
        SegmentCmd::Resume { id, as_of } | SegmentCmd::Refresh { id, as_of } => {
            let ((id, report), _) = change(&base, &describe("segment refresh"), async |w| {
                seg::refresh(w, &id, now_or(as_of)).await
            })
            .await?;
            return finish_compute(&report, &format!("computed {id}"));
        }
        SegmentCmd::List {
            sort,
            status,
            format,
        } => {
            let snap = base.snapshot()?;
            let rows = views::list(&snap, sort.into(), status.as_deref())
                .iter()
                .map(row)
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_rows(format, SEGMENT_COLUMNS, &rows)?;
        }
        SegmentCmd::Show { id, format } => {
            let snap = base.snapshot()?;
            let row = row(&views::show(&snap, &id)?)?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&row)?),
                Format::Parquet => anyhow::bail!("a segment is shown as a table, JSON or CSV"),
                Format::Table | Format::Csv => {
                    for k in SEGMENT_COLUMNS.iter().chain(&["error", "description"]) {
                        println!("{k:>13}: {}", output::cell(&row[k]));
                    }
                    println!(
                        "{:>13}: {}",
                        "criteria",
                        serde_json::to_string(&row["criteria"])?
                    );
                }
            }
        }
        SegmentCmd::History { id, format } => {
            let snap = base.snapshot()?;
            let rows = views::history(&snap, &id)?
                .iter()
                .map(row)
                .collect::<anyhow::Result<Vec<_>>>()?;
            print_rows(format, &["at", "as_of", "size", "entries", "exits"], &rows)?;
        }
        SegmentCmd::Members {
            id,
            limit,
            offset,
            since,
            sort,
            format,
        } => {
            let snap = base.snapshot()?;
            let since = since
                .map(|s| parse_as_of(&s).map_err(anyhow::Error::msg))
                .transpose()?;
            let query = views::MembersQuery {
                since,
                sort,
                offset,
                limit,
            };
            let (batch, _) = views::members_page(&snap, &id, &query)?;
            let rf = format.rows(RowFormat::JsonArray);
            crate::jobs::export::print_batches(&mut std::io::stdout().lock(), &[batch], rf)?;
        }
        SegmentCmd::Overlap {
            ids,
            only_reachable,
            format,
        } => {
            let snap = base.snapshot()?;
            let o = views::overlap(&snap, &ids, only_reachable.map(Into::into))?;
            print_overlap(&o, format)?;
        }
        SegmentCmd::Export { id, out, columns } => {
            let snap = base.snapshot()?;
            let rows = views::export(&snap, &id, &columns, &out)?;
            println!("{rows} contact(s) written to {}", out.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The overlap as JSON (the library's shape), or one row per segment: its
/// status and size, then its intersection with each segment (the table adds
/// the percentage of the row's segment), then the union and intersection.
fn print_overlap(o: &views::Overlap, format: Format) -> anyhow::Result<()> {
    if let Format::Json = format {
        println!("{}", serde_json::to_string_pretty(o)?);
        return Ok(());
    }
    let mut columns: Vec<String> = vec!["segment".into(), "status".into(), "size".into()];
    columns.extend(o.segments.iter().map(|s| s.id.clone()));
    let rows: Vec<serde_json::Value> = o
        .segments
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let mut row = serde_json::Map::new();
            row.insert("segment".into(), s.id.clone().into());
            row.insert("status".into(), s.status.into());
            row.insert("size".into(), s.size.into());
            for (j, other) in o.segments.iter().enumerate() {
                let n = o.matrix[i][j];
                let cell = match (format, o.percent[i][j]) {
                    (Format::Table, Some(p)) if i != j => format!("{n} ({p}%)").into(),
                    _ => n.into(),
                };
                row.insert(other.id.clone(), cell);
            }
            serde_json::Value::Object(row)
        })
        .collect();
    let names: Vec<&str> = columns.iter().map(String::as_str).collect();
    print_rows(format, &names, &rows)?;
    if let Format::Table = format {
        let whom = match o.only_reachable {
            Some(c) => format!(" (contacts reachable by {c})"),
            None => String::new(),
        };
        println!(
            "union: {}, intersection of all: {}{whom}",
            o.union, o.intersection
        );
    }
    Ok(())
}

pub(super) async fn change_static(
    base: &Base,
    id: &str,
    change: seg::StaticChange,
    source: SourceArgs,
) -> anyhow::Result<ExitCode> {
    let source = source.source()?;
    let (n, _) = crate::jobs::change(base, &describe("segment change"), async |w| {
        seg::change_static(w, id, change, &source).await
    })
    .await?;
    println!("{id}: {n} contact(s)");
    Ok(ExitCode::SUCCESS)
}

pub(super) fn finish_compute(report: &RunReport, done: &str) -> anyhow::Result<ExitCode> {
    for s in &report.segments {
        if let Some(e) = &s.error {
            eprintln!("error: segment {} failed: {e}", s.id);
            return Ok(ExitCode::from(2));
        }
    }
    let size = report
        .segments
        .iter()
        .map(|s| s.size)
        .next_back()
        .unwrap_or(0);
    println!("{done}: {size} contact(s) in {} ms", report.duration_ms);
    Ok(ExitCode::SUCCESS)
}

pub(super) fn read_definition(file: &Path) -> anyhow::Result<Definition> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    Definition::parse_str(&text, &file.display().to_string())
        .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}
